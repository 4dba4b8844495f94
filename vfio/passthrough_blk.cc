#include "vfio/passthrough_blk.h"

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <liburing.h>
#include <unistd.h>

#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/virtq/ring.h"

namespace sluice::vfio {

namespace {
// Device-specific bits we take from the hardware and offer on: the request
// types and limits pass through unchanged because the descriptors do.
constexpr uint64_t kBlkBits = (uint64_t{1} << VIRTIO_BLK_F_SIZE_MAX) | (uint64_t{1} << VIRTIO_BLK_F_SEG_MAX) |
                              (uint64_t{1} << VIRTIO_BLK_F_GEOMETRY) | (uint64_t{1} << VIRTIO_BLK_F_RO) |
                              (uint64_t{1} << VIRTIO_BLK_F_BLK_SIZE) | (uint64_t{1} << VIRTIO_BLK_F_FLUSH) |
                              (uint64_t{1} << VIRTIO_BLK_F_TOPOLOGY) | (uint64_t{1} << VIRTIO_BLK_F_MQ) |
                              (uint64_t{1} << VIRTIO_BLK_F_DISCARD) | (uint64_t{1} << VIRTIO_BLK_F_WRITE_ZEROES);
}  // namespace

// One front-end queue on a worker, fed to one device queue.
class PassthroughQueue final : public Pollable {
 public:
  PassthroughQueue(PassthroughBlkDevice& dev, const QueueBinding& b, PassthroughQueueStats& st)
      : dev_(dev), q_(b.queue), idx_(b.index), kick_(b.kick_fd), call_(b.call_fd), st_(st),
        irq_fd_(dev.drv_->pci().queue_eventfd(b.index)) {
    wake_.owner = this;
  }

  unsigned poll(Worker& w, unsigned budget) override {
    reap_device();
    if (quiescing_) return 0;
    unsigned n = 0;
    VirtioBlkDriver& d = *dev_.drv_;
    while (n < budget) {
      // Room for the longest chain we pass (header + data + status at least).
      if (d.free_descs(idx_) < 3) break;
      auto r = q_->pop(chain_);
      if (!r.ok() || !r.value()) break;
      ++n;
      st_.requests.fetch_add(1, std::memory_order_relaxed);
      if (!pass(chain_)) fail(chain_);
    }
    if (submitted_) {
      d.kick(idx_);
      submitted_ = false;
    }
    if (inflight_ > 0) arm_wake(w);
    return n;
  }

  void complete(Worker& w, IoOp*, int) override {
    wake_armed_ = false;
    if (abandoned_) return;  // its ring is gone; only the wait on the device's eventfd was left
    st_.device_irqs.fetch_add(1, std::memory_order_relaxed);
    reap_device();
    if (inflight_ > 0 && !quiescing_) arm_wake(w);
  }

  void end_of_burst(Worker& w) override {
    if (!dirty_) return;
    dirty_ = false;
    if (q_->flush()) w.signal(call_.load(std::memory_order_relaxed));
  }
  int kick_fd() const override { return kick_; }
  bool arm() override {
    q_->set_kick_notification(true);
    return !q_->has_available();
  }
  void disarm() override { q_->set_kick_notification(false); }
  void quiesce() override {
    quiescing_ = true;
    // A pending wait on the device's eventfd must complete before we go.
    if (wake_armed_ && irq_fd_ >= 0) {
      uint64_t one = 1;
      (void)!::write(irq_fd_, &one, sizeof one);
    }
  }
  unsigned inflight() const override { return (abandoned_ ? 0u : inflight_) + (wake_armed_ ? 1u : 0u); }
  // The device kept requests past the deadline: they are left to it (its
  // DMA stays within the guest memory mapped for it, kept here until the
  // device is reset or closed); only the pending eventfd wait is waited for.
  void abandon() override {
    abandoned_ = true;
    mem_keep_ = q_->memory();
  }
  void set_call_fd(int fd) { call_.store(fd, std::memory_order_relaxed); }

 private:
  // The guest's chain, descriptor for descriptor, at IOVA = guest address.
  bool pass(const virtq::Chain& c) {
    auto segs = c.all();
    if (segs.size() > dev_.drv_->free_descs(idx_) || segs.size() > kMaxPass) return false;
    const MemoryTable& mem = *q_->memory();
    for (size_t i = 0; i < segs.size(); ++i) {
      auto gpa = host_to_guest(mem, segs[i].iov_base, segs[i].iov_len);
      if (!gpa) return false;
      bufs_[i] = virtq::DriverBuf{*gpa, static_cast<uint32_t>(segs[i].iov_len), i >= c.nreadable()};
    }
    if (!dev_.drv_->add_raw(idx_, std::span(bufs_, segs.size()), c.head()).ok()) return false;
    ++inflight_;
    submitted_ = true;
    return true;
  }
  // Completes a request the device will not see, with IOERR in its status byte.
  void fail(const virtq::Chain& c) {
    st_.errors.fetch_add(1, std::memory_order_relaxed);
    auto w = c.writable();
    uint32_t len = 0;
    if (!w.empty() && w.back().iov_len > 0) {
      static_cast<uint8_t*>(w.back().iov_base)[w.back().iov_len - 1] = VIRTIO_BLK_S_IOERR;
      len = 1;
    }
    q_->push(c.head(), len);
    dirty_ = true;
  }
  static std::optional<uint64_t> host_to_guest(const MemoryTable& mem, const void* p, size_t len) {
    auto a = reinterpret_cast<uintptr_t>(p);
    for (const GuestRegion& r : mem.regions()) {
      auto h = reinterpret_cast<uintptr_t>(r.host);
      if (a >= h && a - h < r.size && len <= r.size - (a - h)) return r.guest_phys + (a - h);
    }
    return std::nullopt;
  }
  void reap_device() {
    if (inflight_ == 0 || !dev_.drv_->has_used(idx_)) return;
    auto n = dev_.drv_->reap_raw(idx_, [&](uint64_t head, uint32_t len) {
      q_->push(static_cast<uint16_t>(head), len);
      --inflight_;
    });
    if (!n.ok()) {
      // The device broke its ring: nothing more can be trusted from it.
      LOG_WARN("vfio", "queue %u: the device broke its ring (%s); stopping", idx_, n.error().name().data());
      quiescing_ = true;
      return;
    }
    if (n.value() > 0) dirty_ = true;
  }
  void arm_wake(Worker& w) {
    if (wake_armed_) return;
    io_uring_sqe* sqe = w.get_sqe();
    if (sqe == nullptr) return;
    if (irq_fd_ >= 0) {
      io_uring_prep_read(sqe, irq_fd_, &irq_count_, sizeof irq_count_, 0);
    } else {
      // No vector (polled device): look again shortly.
      io_uring_prep_timeout(sqe, &poll_ts_, 0, 0);
    }
    io_uring_sqe_set_data(sqe, &wake_);
    wake_armed_ = true;
  }

  static constexpr size_t kMaxPass = 256;
  PassthroughBlkDevice& dev_;
  virtq::SplitQueue* q_;
  uint16_t idx_;
  int kick_;
  std::atomic<int> call_;
  PassthroughQueueStats& st_;
  int irq_fd_;
  IoOp wake_;
  bool wake_armed_ = false;
  uint64_t irq_count_ = 0;
  __kernel_timespec poll_ts_{0, 20000};
  unsigned inflight_ = 0;
  bool abandoned_ = false;
  std::shared_ptr<const MemoryTable> mem_keep_;
  bool quiescing_ = false, dirty_ = false, submitted_ = false;
  virtq::Chain chain_;
  virtq::DriverBuf bufs_[kMaxPass];
};

Result<std::unique_ptr<PassthroughBlkDevice>> PassthroughBlkDevice::open(Device& dev, DmaMapper& mapper,
                                                                         std::vector<Worker*> workers,
                                                                         uint64_t arena_iova) {
  if (workers.empty()) return Errc::kQueueNotReady;
  std::unique_ptr<PassthroughBlkDevice> d(new PassthroughBlkDevice());
  VirtioBlkOptions o;
  o.queues = 64;
  o.queue_size = 256;
  o.interrupts = true;
  o.arena_iova = arena_iova;
  o.arena_bytes = 4u << 20;
  o.extra_features = kBlkBits;
  auto drv = VirtioBlkDriver::start(dev, mapper, o);
  if (!drv.ok()) return drv.error();
  d->drv_ = std::move(drv.value());
  // A vector each, or one queue: a shared vector's eventfd has one reader.
  d->nq_ = d->drv_->pci().policy() == VectorPolicy::kPerQueue ? d->drv_->queues() : 1;
  d->offered_ = (d->drv_->features() & kBlkBits) | (uint64_t{1} << virtq::kFVersion1) |
                (uint64_t{1} << virtq::kFEventIdx) | (uint64_t{1} << virtq::kFIndirectDesc);
  if (d->nq_ > 1) d->offered_ |= uint64_t{1} << VIRTIO_BLK_F_MQ;
  else d->offered_ &= ~(uint64_t{1} << VIRTIO_BLK_F_MQ);
  auto cfg = d->drv_->pci().config_snapshot(60);  // struct virtio_blk_config through write_zeroes
  if (!cfg.ok()) return cfg.error();
  d->config_ = std::move(cfg.value());
  // num_queues (offset 34) says what we serve.
  if (d->config_.size() >= 36) std::memcpy(&d->config_[34], &d->nq_, 2);
  for (uint16_t i = 0; i < d->nq_; ++i) d->stats_.push_back(std::make_unique<PassthroughQueueStats>());
  d->queues_.init(std::move(workers), d->nq_);
  return d;
}

// Queues first: they use the driver and the stats.
PassthroughBlkDevice::~PassthroughBlkDevice() { queues_.stop_all(); }

uint64_t PassthroughBlkDevice::capacity_bytes() const noexcept {
  uint64_t sectors = 0;
  if (config_.size() >= 8) std::memcpy(&sectors, config_.data(), 8);
  return sectors * 512;
}

Status PassthroughBlkDevice::write_config(uint32_t, std::span<const uint8_t>) {
  return Errc::kInvalidArgument;
}

Status PassthroughBlkDevice::queue_started(const QueueBinding& b) {
  if (b.index >= nq_) return Errc::kVringIndexOutOfRange;
  queues_.stop(b.index);
  queues_.start(b.index, std::make_unique<PassthroughQueue>(*this, b, *stats_[b.index]));
  return {};
}

// Detaching waits for the requests on the device to come back.
void PassthroughBlkDevice::queue_stopped(uint16_t index) { queues_.stop(index); }

void PassthroughBlkDevice::call_fd_changed(uint16_t index, int call_fd) { queues_.set_call_fd(index, call_fd); }

void PassthroughBlkDevice::reset() {
  queues_.stop_all();
  driver_features_ = 0;
}

}  // namespace sluice::vfio
