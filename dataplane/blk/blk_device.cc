#include "dataplane/blk/blk_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/virtq/inflight.h"
#include "dataplane/virtq/ring.h"

namespace sluice::blk {

namespace {
constexpr uint32_t kMaxInflight = 128;  // request slots per queue
constexpr uint64_t kDirectAlign = 4096;  // O_DIRECT only for requests aligned to this
}  // namespace

class BlkQueue final : public Pollable {
 public:
  BlkQueue(BlkDevice& dev, const QueueBinding& b, BlkQueueStats& st)
      : dev_(dev), q_(b.queue), kick_(b.kick_fd), call_(b.call_fd), st_(st),
        slots_(std::min<uint32_t>(kMaxInflight, b.queue->size())) {
    // A new ring starts unbroken (the counters carry on across sessions).
    st_.broken.store(false, std::memory_order_relaxed);
    st_.broken_reason.store(Errc::kOk, std::memory_order_relaxed);
    st_.fault_gpa.store(0, std::memory_order_relaxed);
    for (uint32_t i = 0; i < slots_.size(); ++i) {
      free_.push_back(static_cast<uint16_t>(i));
      for (uint32_t j = 0; j < Request::kMaxSegments; ++j)
        slots_[i].ops[j] = IoOp{this, i << 8 | j};
    }
    done_heads_.reserve(slots_.size());
    if (b.inflight != nullptr) {
      inflight_ = virtq::InflightTracker(b.inflight, b.queue->size());
      resubmit_ = inflight_.recover(*b.queue);
    }
  }

  unsigned poll(Worker& w, unsigned budget) override {
    if (quiescing_) return 0;
    unsigned n = 0;
    while (n < budget && !free_.empty()) {
      uint16_t idx = free_.back();
      Slot& s = slots_[idx];
      // Requests a previous back-end left in flight go first, by head.
      bool again = next_resubmit_ < resubmit_.size();
      auto r = again ? q_->pop_head(resubmit_[next_resubmit_++], s.chain) : q_->pop(s.chain);
      if (!r.ok()) {
        note_broken();
        break;  // the queue is broken (sticky); it is reported by its own log line
      }
      if (!r.value()) break;
      free_.pop_back();
      ++inflight_count_;
      ++n;
      if (!again) inflight_.begin(s.chain.head());
      start(w, idx);
    }
    return n;  // faults start() did not take are the worker's to hand back (on_guest_fault)
  }

  void complete(Worker& w, IoOp* op, int res) override {
    uint32_t idx = op->tag >> 8, seg = op->tag & 0xff;
    Slot& s = slots_[idx];
    if (abandoned_) [[unlikely]] {
      // Its ring and device are gone: the slot is only counted back.
      if (--s.pending == 0) {
        free_.push_back(static_cast<uint16_t>(idx));
        --inflight_count_;
      }
      return;
    }
    uint32_t type = s.req.type;
    if (res == -EFAULT) [[unlikely]] {
      // The kernel met a fault in the request's guest memory. Which page it
      // was, we learn by touching each page once ourselves: the fault that
      // raises is survived and recorded (the worker hands it to this queue
      // after this call), so the page is reported and never used again.
      st_.guest_faults.fetch_add(1, std::memory_order_relaxed);
      probe_pages(s.req);
    }
    if (res < 0) {
      if (res == -EOPNOTSUPP && type == kTWriteZeroes && !s.punch) {
        // ZERO_RANGE is not supported here (tmpfs): punching a hole reads
        // back as zeroes too. Remember, and redo this segment.
        dev_.zero_range_unsupported_.store(true, std::memory_order_relaxed);
        submit_fallocate(w, s, seg, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
        return;
      }
      if (!(res == -EOPNOTSUPP && type == kTDiscard)) s.failed = true;  // discard is a hint
    } else if ((type == kTIn || type == kTOut) && static_cast<uint64_t>(res) != s.req.data_len) {
      s.failed = true;  // short transfer inside the disk: report it, never pad
    }
    if (--s.pending == 0) finish(idx, s.failed ? kSIoErr : kSOk);
  }

  void end_of_burst(Worker& w) override {
    if (!dirty_) return;
    dirty_ = false;
    st_.batches.fetch_add(1, std::memory_order_relaxed);
    st_.record_batch(q_->pending_buffers());
    bool notify = q_->flush();
    // Only once the used index is published do the heads leave the inflight
    // region; a crash in between is repaired from the used ring on recovery.
    for (uint16_t h : done_heads_) inflight_.end(h);
    done_heads_.clear();
    inflight_.set_used_idx(q_->used_idx());
    if (notify) w.signal(call_.load(std::memory_order_relaxed));
  }

  int kick_fd() const override { return kick_; }
  bool arm() override {
    q_->set_kick_notification(true);
    return !q_->has_available();
  }
  void disarm() override { q_->set_kick_notification(false); }
  void quiesce() override { quiescing_ = true; }
  unsigned inflight() const override { return inflight_count_; }
  void abandon() override {
    abandoned_ = true;
    mem_keep_ = q_->memory();  // the kernel may still write into the guest's buffers
  }
  void set_call_fd(int fd) { call_.store(fd, std::memory_order_relaxed); }
  // Faults in this queue's accesses that start() did not take: a ring that
  // read as zeroes (empty, or malformed), a status byte, GET_ID's copy, the
  // inflight region.
  void on_guest_fault() override { (void)take_faults(); }

 private:
  struct Slot {
    IoOp ops[Request::kMaxSegments];
    virtq::Chain chain;
    Request req;
    uint32_t pending = 0;
    uint32_t used_len = 0;
    bool failed = false;
    bool punch = false;
  };

  void start(Worker& w, uint32_t idx) {
    Slot& s = slots_[idx];
    s.pending = 0;
    s.failed = false;
    s.punch = false;
    st_.requests.fetch_add(1, std::memory_order_relaxed);
    Status p = parse_request(s.chain, dev_.limits_, s.req);
    // Guest memory that faulted: the header we just read, or a page that
    // faulted before (the kernel would read our zero page in its place).
    if (fault::pending() || q_->memory_poisoned()) [[unlikely]] {
      if (request_faulted(s)) {
        finish(idx, kSIoErr);
        return;
      }
    }
    if (!p.ok()) {
      finish(idx, status_for(p.error().code));  // counted as an error there
      return;
    }
    if (dev_.opts_.null_backend && s.req.type != kTGetId) {
      s.used_len = s.req.type == kTIn ? static_cast<uint32_t>(s.req.data_len) + 1 : 1;
      finish(idx, kSOk);
      return;
    }
    switch (s.req.type) {
      case kTIn:
      case kTOut: {
        int fd = pick_fd(s.req);
        uint64_t off = s.req.sector * kSectorSize;
        s.used_len = s.req.type == kTIn ? static_cast<uint32_t>(s.req.data_len) + 1 : 1;
        (s.req.type == kTIn ? st_.read_bytes : st_.write_bytes)
            .fetch_add(s.req.data_len, std::memory_order_relaxed);
        if (!dev_.remote_fs_ && try_inline(fd, s.req, off)) {
          finish(idx, kSOk);
          return;
        }
        io_uring_sqe* sqe = w.get_sqe();
        if (s.req.type == kTIn)
          io_uring_prep_readv(sqe, fd, s.req.iov, s.req.iovcnt, off);
        else
          io_uring_prep_writev(sqe, fd, s.req.iov, s.req.iovcnt, off);
        async_if_remote(sqe);
        io_uring_sqe_set_data(sqe, &s.ops[0]);
        s.pending = 1;
        return;
      }
      case kTFlush: {
        // 5.2.6.1: data the driver saw completed must be durable before the
        // status says so: fdatasync semantics.
        io_uring_sqe* sqe = w.get_sqe();
        io_uring_prep_fsync(sqe, dev_.fd_.get(), IORING_FSYNC_DATASYNC);
        async_if_remote(sqe);
        io_uring_sqe_set_data(sqe, &s.ops[0]);
        s.pending = 1;
        s.used_len = 1;
        st_.flushes.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      case kTGetId: {
        char id[kIdBytes] = {};
        std::memcpy(id, dev_.opts_.serial.data(), std::min<size_t>(kIdBytes, dev_.opts_.serial.size()));
        uint64_t left = s.req.data_len, at = 0;
        for (uint32_t i = 0; i < s.req.iovcnt && left > 0; ++i) {
          uint64_t n = std::min<uint64_t>(left, s.req.iov[i].iov_len);
          std::memcpy(s.req.iov[i].iov_base, id + at, n);
          at += n;
          left -= n;
        }
        s.used_len = static_cast<uint32_t>(s.req.data_len) + 1;
        finish(idx, kSOk);
        return;
      }
      case kTDiscard:
      case kTWriteZeroes: {
        s.used_len = 1;
        s.pending = s.req.nsegs;
        for (uint32_t i = 0; i < s.req.nsegs; ++i) {
          int mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
          if (s.req.type == kTWriteZeroes && !(s.req.segs[i].flags & 1) &&
              !dev_.zero_range_unsupported_.load(std::memory_order_relaxed))
            mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
          submit_fallocate(w, s, i, mode);
        }
        return;
      }
      default:
        finish(idx, kSUnsupp);  // parse_request refuses these; kept for safety
    }
  }

  // The thread's pending faults: pages recorded as poisoned, the queue
  // broken when they hit its rings or the inflight region.
  virtq::SplitQueue::FaultHit take_faults() {
    auto hit = q_->take_faults();
    if (hit == virtq::SplitQueue::FaultHit::kOutside && !q_->broken())
      q_->mark_broken(Errc::kGuestMemoryFault);  // our inflight bookkeeping is gone
    if (q_->broken()) note_broken();
    return hit;
  }

  // Whether a request must fail because of guest memory faults: one during
  // its parse, or a buffer on a page that faulted before.
  bool request_faulted(const Slot& s) {
    bool failed = false;
    if (fault::pending()) failed = take_faults() != virtq::SplitQueue::FaultHit::kNone;
    failed = failed || (q_->memory_poisoned() && q_->chain_poisoned(s.chain));
    if (failed) st_.guest_faults.fetch_add(1, std::memory_order_relaxed);
    return failed;
  }

  // Touches a failed request's pages (one byte each) until one faults, at
  // most kProbePages of them: a hostile request may span gigabytes.
  static constexpr unsigned kProbePages = 256;
  static void probe_pages(const Request& r) {
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    unsigned left = kProbePages;
    for (uint32_t i = 0; i < r.iovcnt; ++i) {
      const auto a = reinterpret_cast<uintptr_t>(r.iov[i].iov_base);
      for (uintptr_t p = a & ~(page - 1); p < a + r.iov[i].iov_len; p += page) {
        (void)*reinterpret_cast<const volatile uint8_t*>(std::max(p, a));
        if (fault::pending() || --left == 0) return;
      }
    }
  }

  // Publishes why the queue is broken (again when a fault turns out to be
  // the cause of what looked like a malformed ring); counted once.
  void note_broken() {
    st_.fault_gpa.store(q_->fault_gpa(), std::memory_order_relaxed);
    st_.broken_reason.store(q_->broken_reason().code, std::memory_order_relaxed);
    st_.broken.store(true, std::memory_order_relaxed);
    if (reported_broken_) return;
    reported_broken_ = true;
    st_.errors.fetch_add(1, std::memory_order_relaxed);
  }

  void submit_fallocate(Worker& w, Slot& s, uint32_t seg, int mode) {
    s.punch = s.punch || (mode & FALLOC_FL_PUNCH_HOLE);
    io_uring_sqe* sqe = w.get_sqe();
    const DiscardSegment& d = s.req.segs[seg];
    io_uring_prep_fallocate(sqe, dev_.fd_.get(), mode, static_cast<off_t>(d.sector * kSectorSize),
                            static_cast<off_t>(uint64_t{d.num_sectors} * kSectorSize));
    async_if_remote(sqe);
    io_uring_sqe_set_data(sqe, &s.ops[seg]);
  }

  // A file on a network or userspace file system may block the submitting
  // thread even when asked not to (FUSE readahead waits for its server):
  // such requests always go to io_uring's own workers, never run inline on
  // ours, so a hung server stalls only this disk's requests.
  void async_if_remote(io_uring_sqe* sqe) const {
    if (dev_.remote_fs_) sqe->flags |= IOSQE_ASYNC;
  }

  // Buffered I/O whose data is in the page cache is a copy: do it here with
  // RWF_NOWAIT instead of handing it to io_uring, which would complete it in
  // one of its worker threads when the file system (tmpfs) cannot do it
  // inline. Anything that would block, or comes back short, goes to io_uring
  // whole (repeating a read or the same write is harmless).
  bool try_inline(int fd, const Request& r, uint64_t off) {
    if (fd != dev_.fd_.get() || !inline_ok_) return false;
    int flags = dev_.memory_backed_ ? 0 : RWF_NOWAIT;
    ssize_t n = r.type == kTIn ? ::preadv2(fd, r.iov, static_cast<int>(r.iovcnt),
                                           static_cast<off_t>(off), flags)
                               : ::pwritev2(fd, r.iov, static_cast<int>(r.iovcnt),
                                            static_cast<off_t>(off), flags);
    if (n < 0 && errno == EOPNOTSUPP) inline_ok_ = false;  // this file never can
    return n >= 0 && static_cast<uint64_t>(n) == r.data_len;
  }

  // O_DIRECT when the file allows it and the request is aligned for it.
  int pick_fd(const Request& r) const {
    if (!dev_.direct_fd_.valid() || (r.sector * kSectorSize) % kDirectAlign) return dev_.fd_.get();
    for (uint32_t i = 0; i < r.iovcnt; ++i)
      if (reinterpret_cast<uintptr_t>(r.iov[i].iov_base) % kDirectAlign ||
          r.iov[i].iov_len % kDirectAlign)
        return dev_.fd_.get();
    return dev_.direct_fd_.get();
  }

  void finish(uint32_t idx, uint8_t status) {
    Slot& s = slots_[idx];
    uint32_t len = 0;
    if (s.req.status != nullptr) {
      *s.req.status = status;
      len = status == kSOk ? s.used_len : 1;
    }
    if (status != kSOk) st_.errors.fetch_add(1, std::memory_order_relaxed);
    inflight_.pre_put(s.chain.head());
    q_->push(s.chain.head(), len);
    done_heads_.push_back(s.chain.head());
    dirty_ = true;
    free_.push_back(static_cast<uint16_t>(idx));
    --inflight_count_;
  }

  BlkDevice& dev_;
  virtq::SplitQueue* q_;
  int kick_;
  std::atomic<int> call_;
  BlkQueueStats& st_;
  std::vector<Slot> slots_;
  std::vector<uint16_t> free_;
  unsigned inflight_count_ = 0;
  virtq::InflightTracker inflight_;
  std::vector<uint16_t> resubmit_;  // heads to redo after a back-end restart
  size_t next_resubmit_ = 0;
  std::vector<uint16_t> done_heads_;  // completed this burst
  bool dirty_ = false;
  bool quiescing_ = false;
  bool abandoned_ = false;
  std::shared_ptr<const MemoryTable> mem_keep_;  // once abandoned
  bool reported_broken_ = false;
  bool inline_ok_ = true;
};

namespace {
// File systems whose I/O can wait on a server (or a process) without bound.
bool remote_fs_magic(uint64_t magic) {
  switch (magic) {
    case 0x65735546:  // FUSE (fuse, fuseblk)
    case 0x6969:      // NFS
    case 0x517B:      // SMB
    case 0xFF534D42:  // CIFS
    case 0xFE534D42:  // SMB2
    case 0x00C36400:  // Ceph
    case 0x01021997:  // 9P
    case 0x5346414F:  // AFS
    case 0x7461636F:  // OCFS2
    case 0x01161970:  // GFS2
    case 0x73757245:  // Coda
    case 0x13661366:  // OrangeFS
      return true;
    default:
      return false;
  }
}
}  // namespace

Result<std::unique_ptr<BlkDevice>> BlkDevice::open(const BlkOptions& opts,
                                                   std::vector<Worker*> workers) {
  if (workers.empty() || opts.queues == 0 || opts.queue_size == 0 ||
      (opts.queue_size & (opts.queue_size - 1)) != 0)
    return Errc::kInvalidArgument;
  std::unique_ptr<BlkDevice> d(new BlkDevice());
  d->opts_ = opts;
  d->queues_.init(std::move(workers), opts.queues);
  if (opts.null_backend) {
    if (opts.size < kSectorSize) return Errc::kInvalidArgument;
    d->init_geometry(opts.size);
    return d;
  }
  int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (opts.size != 0 && !opts.read_only) flags |= O_CREAT;
  d->fd_.reset(::open(opts.file.c_str(), flags, 0600));
  if (!d->fd_.valid()) return Error::from_errno(errno);
  struct stat st{};
  if (::fstat(d->fd_.get(), &st) != 0) return Error::from_errno(errno);
  uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    if (::ioctl(d->fd_.get(), BLKGETSIZE64, &bytes) != 0) return Error::from_errno(errno);
  } else if (!S_ISREG(st.st_mode)) {
    return Errc::kInvalidArgument;
  } else if (opts.size > bytes && !opts.read_only) {
    if (::ftruncate(d->fd_.get(), static_cast<off_t>(opts.size)) != 0)
      return Error::from_errno(errno);
    bytes = opts.size;  // sparse
  }
  struct statfs sfs{};
  // A file system that cannot say what it is (a FUSE server failing
  // STATFS) is taken for one that may hang.
  d->remote_fs_ = ::fstatfs(d->fd_.get(), &sfs) != 0 || remote_fs_magic(static_cast<uint64_t>(sfs.f_type));
  if (d->remote_fs_)
    LOG_INFO("blk", "%s is on a network or userspace file system: its requests never run on a worker's thread",
             opts.file.c_str());
  if (::fstatfs(d->fd_.get(), &sfs) == 0 && (static_cast<uint64_t>(sfs.f_type) == TMPFS_MAGIC ||
                                             static_cast<uint64_t>(sfs.f_type) == RAMFS_MAGIC))
    d->memory_backed_ = true;
  // On memory file systems O_DIRECT is the same copy by a longer road.
  if (opts.direct && !d->memory_backed_) {
    d->direct_fd_.reset(::open(opts.file.c_str(), (flags & ~O_CREAT) | O_DIRECT));
    // tmpfs and some others refuse O_DIRECT: buffered I/O only, then.
  }
  d->init_geometry(bytes);
  return d;
}

void BlkDevice::init_geometry(uint64_t bytes) {
  capacity_ = bytes / kSectorSize * kSectorSize;
  uint64_t sectors = capacity_ / kSectorSize;
  limits_ = DiskLimits{sectors, opts_.read_only, 1u << 22, Request::kMaxSegments, 1u << 22,
                       Request::kMaxSegments};
  Config& c = config_;
  c.capacity = sectors;
  c.seg_max = opts_.queue_size - 2u;
  c.blk_size = kSectorSize;
  c.num_queues = opts_.queues;
  c.max_discard_sectors = limits_.max_discard_sectors;
  c.max_discard_seg = limits_.max_discard_segments;
  c.discard_sector_alignment = 8;
  c.max_write_zeroes_sectors = limits_.max_write_zeroes_sectors;
  c.max_write_zeroes_seg = limits_.max_write_zeroes_segments;
  c.write_zeroes_may_unmap = 1;
  for (uint16_t i = 0; i < opts_.queues; ++i) stats_.push_back(std::make_unique<BlkQueueStats>());
}

// Queues first: they use the device's stats and options.
BlkDevice::~BlkDevice() { queues_.stop_all(); }

uint64_t BlkDevice::device_features() const {
  uint64_t f = (1ull << virtq::kFVersion1) | (1ull << virtq::kFEventIdx) |
               (1ull << virtq::kFIndirectDesc) | (1ull << kFSegMax) | (1ull << kFBlkSize) |
               (1ull << kFFlush) | (1ull << kFMq);
  if (opts_.read_only)
    f |= 1ull << kFRo;
  else
    f |= (1ull << kFDiscard) | (1ull << kFWriteZeroes);
  return f;
}

std::span<const uint8_t> BlkDevice::config() const {
  return {reinterpret_cast<const uint8_t*>(&config_), sizeof config_};
}

Status BlkDevice::write_config(uint32_t, std::span<const uint8_t>) {
  return Errc::kInvalidArgument;  // no writable field without CONFIG_WCE, which we do not offer
}

Status BlkDevice::queue_started(const QueueBinding& b) {
  if (b.index >= queues_.size()) return Errc::kVringIndexOutOfRange;
  queues_.stop(b.index);
  queues_.start(b.index, std::make_unique<BlkQueue>(*this, b, *stats_[b.index]));
  return {};
}

void BlkDevice::queue_stopped(uint16_t index) { queues_.stop(index); }

void BlkDevice::call_fd_changed(uint16_t index, int call_fd) { queues_.set_call_fd(index, call_fd); }

void BlkDevice::reset() {
  queues_.stop_all();
  driver_features_ = 0;
}

}  // namespace sluice::blk
