#include "dataplane/net/net_device.h"

#include <algorithm>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/virtq/ring.h"

namespace sluice::net {

const char* mode_name(PortMode m) {
  switch (m) {
    case PortMode::kSwitch: return "switch";
    case PortMode::kReflect: return "reflect";
    case PortMode::kSink: return "sink";
    case PortMode::kSource: return "source";
  }
  return "?";
}

namespace {

// Copies n bytes from `src` into the chain's writable segments at byte `off`.
void write_at(std::span<const iovec> w, uint32_t off, const void* src, uint32_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  for (const iovec& v : w) {
    if (n == 0) return;
    if (off >= v.iov_len) {
      off -= static_cast<uint32_t>(v.iov_len);
      continue;
    }
    uint32_t k = std::min<uint32_t>(n, static_cast<uint32_t>(v.iov_len - off));
    std::memcpy(static_cast<uint8_t*>(v.iov_base) + off, s, k);
    s += k;
    n -= k;
    off = 0;
  }
}

// Gathers n bytes at byte `off` of the segments into dst; returns bytes read.
uint32_t read_at(const iovec* iov, uint32_t niov, uint64_t off, void* dst, uint32_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  uint32_t done = 0;
  for (uint32_t i = 0; i < niov && done < n; ++i) {
    if (off >= iov[i].iov_len) {
      off -= iov[i].iov_len;
      continue;
    }
    size_t k = std::min<size_t>(n - done, iov[i].iov_len - off);
    std::memcpy(d + done, static_cast<const uint8_t*>(iov[i].iov_base) + off, k);
    done += static_cast<uint32_t>(k);
    off = 0;
  }
  return done;
}

// The Internet checksum (RFC 1071) of bytes [off, off+n) of the segments,
// folded and complemented, in network byte order as it is stored.
uint16_t inet_csum(const iovec* iov, uint32_t niov, uint64_t off, uint32_t n) {
  uint64_t sum = 0;
  bool odd = false;  // the next byte is the low half of a 16-bit word
  for (uint32_t i = 0; i < niov && n > 0; ++i) {
    if (off >= iov[i].iov_len) {
      off -= iov[i].iov_len;
      continue;
    }
    const auto* p = static_cast<const uint8_t*>(iov[i].iov_base) + off;
    size_t k = std::min<size_t>(n, iov[i].iov_len - off);
    for (size_t j = 0; j < k; ++j) {
      sum += odd ? p[j] : uint32_t{p[j]} << 8;
      odd = !odd;
    }
    n -= static_cast<uint32_t>(k);
    off = 0;
  }
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t c = static_cast<uint16_t>(~sum);
  return static_cast<uint16_t>(c >> 8 | c << 8);  // big-endian bytes in memory
}

constexpr uint32_t kVlanTag = 4;
// How many chains ahead the data path prefetches buffers.
constexpr uint16_t kPrefetch = 8;  // a tagged frame may exceed MTU + 14 by this much
constexpr uint16_t kMaxPairs = 256;

// Writes the 12 header bytes with two stores of values built in registers
// (a struct on the stack, patched and then copied, would stall on store
// forwarding), and only the parts that differ from what the buffer holds. A
// driver that recycles its receive buffers finds the same header there
// frame after frame (no flags, num_buffers 1); when it keeps the header in a
// line of its own (DPDK's virtio PMD puts it at the end of the mbuf
// headroom), a line we never write stays in its cache, and reading
// num_buffers is no longer a miss on every frame.
inline void store_hdr(uint8_t* dst, const VnetHdr& h) {
  uint64_t lo = uint64_t{h.flags} | uint64_t{h.gso_type} << 8 | uint64_t{h.hdr_len} << 16 |
                uint64_t{h.gso_size} << 32 | uint64_t{h.csum_start} << 48;
  uint32_t hi = uint32_t{h.csum_offset} | uint32_t{h.num_buffers} << 16;
  uint64_t old_lo;
  uint32_t old_hi;
  std::memcpy(&old_lo, dst, 8);
  std::memcpy(&old_hi, dst + 8, 4);
  if (old_lo != lo) std::memcpy(dst, &lo, 8);
  if (old_hi != hi) std::memcpy(dst + 8, &hi, 4);
}

}  // namespace

// ------------------------------------------------------------------ queues

class NetQueue : public Pollable {
 public:
  NetQueue(NetDevice& d, const QueueBinding& b) : dev_(d), q_(b.queue), kick_(b.kick_fd), call_(b.call_fd) {
    // The worker polls a started queue at once: no kicks until it has found
    // the queue idle and arms it before sleeping (a kick per driver burst is
    // a system call on the driver's side).
    q_->set_kick_notification(false);
  }
  void set_call_fd(int fd) { call_.store(fd, std::memory_order_relaxed); }
  void complete(Worker&, IoOp*, int) override {}
  void end_of_burst(Worker& w) override {
    if (publish_used()) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      signal_needed(w);
    }
  }
  // Two-phase end of burst (see Pollable): one fence per worker burst, not
  // one per queue.
  bool two_phase() const override { return true; }
  bool publish_used() override {
    if (!dirty_) return false;
    dirty_ = false;
    published_ = q_->publish();
    return published_;
  }
  void signal_needed(Worker& w) override {
    if (!published_) return;
    published_ = false;
    if (q_->notify_needed()) w.signal(call_.load(std::memory_order_relaxed));
  }
  int kick_fd() const override { return kick_; }
  bool arm() override {
    q_->set_kick_notification(true);
    return !q_->has_available();
  }
  void disarm() override { q_->set_kick_notification(false); }
  void quiesce() override { quiescing_ = true; }
  unsigned inflight() const override { return 0; }
  // Faults a call left that no frame claimed: this queue's rings (the queue
  // breaks) or pages of its memory (poisoned). Faults in other ports'
  // memory were claimed by the frame that met them (NetRxQueue::receive).
  void on_guest_fault() override {
    (void)q_->take_faults();
    if (q_->broken()) note_broken();
  }

 protected:
  // The next chain, or false when the ring is empty or broken.
  bool pop(virtq::Chain& c) {
    auto r = q_->pop(c);
    if (r.ok()) return r.value();
    note_broken();
    return false;
  }
  // A broken ring is logged once; the queue stays stopped until restarted.
  void note_broken() {
    if (reported_broken_) return;
    reported_broken_ = true;
    LOG_WARN("net", "%s: queue broken: %.*s", dev_.name().c_str(),
             static_cast<int>(q_->broken_reason().name().size()), q_->broken_reason().name().data());
  }
  NetDevice& dev_;
  virtq::SplitQueue* q_;
  int kick_;
  std::atomic<int> call_;
  bool dirty_ = false;
  bool published_ = false;
  bool quiescing_ = false;
  bool reported_broken_ = false;
};

class NetRxQueue final : public NetQueue {
 public:
  static constexpr uint32_t kMaxBufs = 64;  // receive buffers one frame may span (MRG_RXBUF)
  enum class Rx : uint8_t { kOk, kNoBuffer, kDropped };

  NetRxQueue(NetDevice& d, const QueueBinding& b, uint16_t pair) : NetQueue(d, b), pair_(pair) {
    source_ = d.opts_.mode == PortMode::kSource;
    if (source_) {
      // A frame to the guest's MAC from a locally administered one,
      // EtherType 0x88b5 (local experimental), a sequence number, a pattern.
      frame_.assign(d.opts_.source_frame, 0);
      uint64_t dst = d.mac_, src = 0x02534c000000ull | pair;
      for (int i = 0; i < 6; ++i) {
        frame_[static_cast<size_t>(i)] = static_cast<uint8_t>(dst >> (40 - 8 * i));
        frame_[static_cast<size_t>(6 + i)] = static_cast<uint8_t>(src >> (40 - 8 * i));
      }
      frame_[12] = 0x88;
      frame_[13] = 0xb5;
      for (size_t i = 22; i < frame_.size(); ++i) frame_[i] = static_cast<uint8_t>(i);
      tmpl_iov_ = iovec{frame_.data(), frame_.size()};
      tmpl_.iov = &tmpl_iov_;
      tmpl_.niov = 1;
      tmpl_.len = static_cast<uint32_t>(frame_.size());
      std::memcpy(tmpl_.eth, frame_.data(), kEthHdrLen);
    }
  }

  uint16_t pair() const noexcept { return pair_; }

  unsigned poll(Worker&, unsigned budget) override {
    if (!source_ || quiescing_ || q_->broken()) return 0;
    unsigned n = 0;
    while (n < budget) {
      std::memcpy(frame_.data() + kEthHdrLen, &seq_, std::min<size_t>(8, frame_.size() - kEthHdrLen));
      if (receive(tmpl_, false) == Rx::kNoBuffer) break;
      ++seq_;
      ++n;
    }
    return n;
  }
  int kick_fd() const override { return source_ ? kick_ : -1; }
  bool arm() override { return source_ ? NetQueue::arm() : true; }
  void disarm() override {
    if (source_) NetQueue::disarm();
  }

  // Copies one frame into the driver's receive buffers (worker).
  Rx receive(const Packet& p, bool count_no_buffer = true) {
    PortStats& st = dev_.stats();
    if (quiescing_) {
      st.drop(Drop::kRxNotReady);
      return Rx::kDropped;
    }
    const uint32_t hl = dev_.hdr_len_;
    const bool finish_csum = p.needs_csum && !dev_.guest_csum_;
    VnetHdr h{};
    if (p.needs_csum && dev_.guest_csum_) {
      h.flags = kHdrFNeedsCsum;
      h.csum_start = p.csum_start;
      h.csum_offset = p.csum_offset;
    } else if (p.data_valid && dev_.guest_csum_) {
      h.flags = kHdrFDataValid;
    }
    const uint32_t total = hl + p.len;
    q_->prefetch_ahead(kPrefetch, true, hl);
    auto r = q_->pop(first_);
    if (!r.ok()) {
      note_broken();
      st.drop(Drop::kRxNotReady);
      return Rx::kDropped;
    }
    if (!r.value()) {
      if (count_no_buffer) st.drop(Drop::kNoRxBuffer);
      return Rx::kNoBuffer;
    }
    if (q_->memory_poisoned() && q_->chain_poisoned(first_)) [[unlikely]] {
      q_->push(first_.head(), 0);  // used, empty: a buffer on a page that faulted is never written
      dirty_ = true;
      st.drop(Drop::kGuestFault);
      return Rx::kDropped;
    }
    auto w = first_.writable();
    if (first_.writable_bytes() < hl) {
      // No room for even the header: give the buffer back unused.
      q_->push(first_.head(), 0);
      dirty_ = true;
      st.drop(Drop::kRxBadChain);
      return Rx::kDropped;
    }
    // Fast path: the whole frame fits the first segment of one buffer.
    if (w[0].iov_len >= total) [[likely]] {
      auto* base = static_cast<uint8_t*>(w[0].iov_base);
      // Fixed-size copies (inlined): 12 header bytes even when the header is
      // 10 (the frame's first bytes overwrite the extra two next), then the
      // Ethernet header, then the rest of the frame.
      h.num_buffers = 1;
      store_hdr(base, h);
      std::memcpy(base + hl, p.eth, kEthHdrLen);
      // memmove: a guest may post a receive buffer that overlaps the frame
      // it sends (same speed as memcpy in glibc; memcpy would be UB).
      if (p.niov == 1 && !finish_csum) [[likely]]
        std::memmove(base + hl + kEthHdrLen,
                    static_cast<const uint8_t*>(p.iov[0].iov_base) + p.offset + kEthHdrLen, p.len - kEthHdrLen);
      else
        p.copy_out(kEthHdrLen, base + hl + kEthHdrLen, p.len - kEthHdrLen, finish_csum);
      if (p.faulted || fault::pending()) [[unlikely]] {
        if (frame_faulted(p)) {
          q_->push(first_.head(), 0);
          dirty_ = true;
          st.drop(Drop::kGuestFault);
          return Rx::kDropped;
        }
      }
      q_->push(first_.head(), total);
      dirty_ = true;
      PortStats::add(st.rx_packets, 1);
      PortStats::add(st.rx_bytes, p.len);
      return Rx::kOk;
    }
    if (!dev_.mrg_ && first_.writable_bytes() < total) {
      q_->discard(1, first_.table_descs());  // the buffer stays the driver's
      st.drop(Drop::kRxTooSmall);
      return Rx::kDropped;
    }
    // Slow path: scattered buffers, or a frame spread over several (MRG_RXBUF).
    uint32_t nbufs = 0, ndescs = 0;
    uint32_t pos = 0;  // frame bytes written
    virtq::Chain* c = &first_;
    uint32_t skip = hl;  // the first buffer starts with the header
    for (;;) {
      uint32_t in_buf = skip;
      // Fill this buffer's writable segments from byte `skip` on.
      uint32_t off = skip;
      for (const iovec& v : c->writable()) {
        if (pos >= p.len) break;
        if (off >= v.iov_len) {
          off -= static_cast<uint32_t>(v.iov_len);
          continue;
        }
        uint32_t k = p.copy_out(pos, static_cast<uint8_t*>(v.iov_base) + off,
                                static_cast<uint32_t>(v.iov_len - off), finish_csum);
        pos += k;
        in_buf += k;
        off = 0;
      }
      heads_[nbufs] = c->head();
      lens_[nbufs] = in_buf;
      ndescs += c->table_descs();
      ++nbufs;
      if (pos >= p.len) break;
      if (nbufs == kMaxBufs) {
        q_->discard(static_cast<uint16_t>(nbufs), static_cast<uint16_t>(ndescs));
        st.drop(Drop::kRxTooSmall);
        return Rx::kDropped;
      }
      auto r2 = q_->pop(cur_);
      if (!r2.ok()) {
        note_broken();
        st.drop(Drop::kRxNotReady);
        return Rx::kDropped;
      }
      if (!r2.value()) {
        q_->discard(static_cast<uint16_t>(nbufs), static_cast<uint16_t>(ndescs));
        if (count_no_buffer) st.drop(Drop::kNoRxBuffer);
        return Rx::kNoBuffer;
      }
      if (cur_.writable_bytes() == 0 || (q_->memory_poisoned() && q_->chain_poisoned(cur_))) {
        // A hostile chain in the middle of a frame: hand every buffer taken
        // for it back as used with nothing in it, and drop the frame.
        for (uint32_t i = 0; i < nbufs; ++i) q_->push(heads_[i], 0);
        q_->push(cur_.head(), 0);
        dirty_ = true;
        st.drop(Drop::kRxBadChain);
        return Rx::kDropped;
      }
      c = &cur_;
      skip = 0;
    }
    h.num_buffers = static_cast<uint16_t>(nbufs);
    write_at(first_.writable(), 0, &h, hl);
    if ((p.faulted || fault::pending()) && frame_faulted(p)) [[unlikely]] {
      for (uint32_t i = 0; i < nbufs; ++i) q_->push(heads_[i], 0);
      dirty_ = true;
      st.drop(Drop::kGuestFault);
      return Rx::kDropped;
    }
    for (uint32_t i = 0; i < nbufs; ++i) q_->push(heads_[i], lens_[i]);
    dirty_ = true;
    PortStats::add(st.rx_packets, 1);
    PortStats::add(st.rx_bytes, p.len);
    return Rx::kOk;
  }

 private:
  // Faults met while copying a frame: in the sender's memory (reading it)
  // or this receiver's (its buffers, its ring). Each is recorded where it
  // lies; the frame is dropped when any was met.
  bool frame_faulted(const Packet& p) {
    fault::Fault fs[fault::ThreadFaults::kRecent];
    const size_t n = fault::take(fs);
    for (size_t i = 0; i < n; ++i)
      if (q_->note_fault(fs[i]) == virtq::SplitQueue::FaultHit::kOutside && p.src_mem != nullptr)
        (void)p.src_mem->note_fault(fs[i]);
    if (q_->broken()) note_broken();
    p.faulted = p.faulted || n != 0;
    return p.faulted;
  }

  uint16_t pair_;
  bool source_ = false;
  virtq::Chain first_, cur_;
  uint16_t heads_[kMaxBufs] = {};
  uint32_t lens_[kMaxBufs] = {};
  // source mode
  std::vector<uint8_t> frame_;
  iovec tmpl_iov_{};
  Packet tmpl_;
  uint64_t seq_ = 0;
};

class NetTxQueue final : public NetQueue {
 public:
  NetTxQueue(NetDevice& d, const QueueBinding& b, uint16_t pair) : NetQueue(d, b), pair_(pair) {}

  unsigned poll(Worker&, unsigned budget) override {
    if (quiescing_) return 0;
    unsigned n = 0;
    uint64_t now = 0;
    if (dev_.opts_.mode != PortMode::kSink) q_->prefetch_burst(kPrefetch, false);
    while (n < budget) {
      if (!pop(chain_)) break;
      ++n;
      if (dev_.opts_.mode != PortMode::kSink) q_->prefetch_ahead(kPrefetch, false);
      if (now == 0 && dev_.opts_.mode == PortMode::kSwitch) now = Switch::now_ns();
      if (q_->memory_poisoned() && q_->chain_poisoned(chain_)) [[unlikely]]
        dev_.stats().drop(Drop::kGuestFault);  // on a page that faulted before: never read
      else
        transmit(now);
      q_->push(chain_.head(), 0);  // nothing is written into a transmit buffer
    }
    if (n != 0) dirty_ = true;
    return n;
  }

 private:
  void transmit(uint64_t now) {
    PortStats& st = dev_.stats();
    const uint32_t hl = dev_.hdr_len_;
    auto rd = chain_.readable();
    uint64_t rb = chain_.readable_bytes();
    if (rb < hl) {
      st.drop(Drop::kShortHeader);
      return;
    }
    const uint64_t len = rb - hl;
    if (len < kEthHdrLen) {
      st.drop(Drop::kRunt);
      return;
    }
    if (len > uint64_t{dev_.opts_.mtu} + kEthHdrLen + kVlanTag) {
      st.drop(Drop::kOversize);
      return;
    }
    if (dev_.opts_.mode == PortMode::kSink) {
      // Counted and dropped by length alone: the frame's bytes are never
      // read, so its lines stay the driver's to refill.
      PortStats::add(st.tx_packets, 1);
      PortStats::add(st.tx_bytes, len);
      return;
    }
    Packet p;
    p.iov = rd.data();
    p.niov = static_cast<uint32_t>(rd.size());
    p.src_mem = q_->memory().get();
    p.offset = hl;
    p.len = static_cast<uint32_t>(len);
    VnetHdr h{};
    if (rd[0].iov_len >= hl + kEthHdrLen) [[likely]] {
      // Fixed-size copies (inlined); with a 10-byte header the 12 bytes read
      // end inside the Ethernet header, and num_buffers is not used on transmit.
      const auto* b = static_cast<const uint8_t*>(rd[0].iov_base);
      std::memcpy(&h, b, sizeof h);
      std::memcpy(p.eth, b + hl, kEthHdrLen);
    } else {
      read_at(p.iov, p.niov, 0, &h, hl);
      read_at(p.iov, p.niov, hl, p.eth, kEthHdrLen);
    }
    if (fault::pending()) [[unlikely]] {
      // The header's page faulted (it read as zeroes): never forwarded.
      (void)q_->take_faults();
      if (q_->broken()) note_broken();
      st.drop(Drop::kGuestFault);
      return;
    }
    if (h.flags & kHdrFNeedsCsum) [[unlikely]] {
      if (!(dev_.features_ >> kFCsum & 1) ||
          uint32_t{h.csum_start} + h.csum_offset + 2 > p.len) {
        st.drop(Drop::kBadCsum);
        return;
      }
      p.needs_csum = true;
      p.csum_start = h.csum_start;
      p.csum_offset = h.csum_offset;
      p.csum = inet_csum(p.iov, p.niov, uint64_t{hl} + h.csum_start, p.len - h.csum_start);
    } else if (h.flags & kHdrFDataValid) {
      p.data_valid = true;
    }
    PortStats::add(st.tx_packets, 1);
    PortStats::add(st.tx_bytes, p.len);
    switch (dev_.opts_.mode) {
      case PortMode::kSink:
        return;  // handled above
      case PortMode::kReflect:
        for (uint32_t i = 0; i < 6; ++i) std::swap(p.eth[i], p.eth[6 + i]);
        dev_.deliver(p, pair_);
        return;
      case PortMode::kSwitch:
      case PortMode::kSource:
        dev_.sw_.forward(dev_, p, pair_, now == 0 ? Switch::now_ns() : now);
        return;
    }
  }

  uint16_t pair_;
  virtq::Chain chain_;
};

class NetCtrlQueue final : public NetQueue {
 public:
  static constexpr uint32_t kMaxCommand = 2 + 2 * (4 + 6 * 1024);  // a MAC table of 1024+1024 entries

  using NetQueue::NetQueue;

  unsigned poll(Worker&, unsigned budget) override {
    if (quiescing_) return 0;
    unsigned n = 0;
    while (n < budget) {
      if (!pop(chain_)) break;
      ++n;
      dirty_ = true;
      if (chain_.writable_bytes() == 0) {
        // Nowhere to put the ack: the command is not run.
        dev_.ctrl_err_.fetch_add(1, std::memory_order_relaxed);
        q_->push(chain_.head(), 0);
        continue;
      }
      uint8_t ack = kCtrlErr;
      uint64_t rb = chain_.readable_bytes();
      if (rb >= 2 && rb <= kMaxCommand) {
        auto rd = chain_.readable();
        uint32_t got = read_at(rd.data(), static_cast<uint32_t>(rd.size()), 0, buf_, static_cast<uint32_t>(rb));
        ack = dev_.control(buf_[0], buf_[1], buf_ + 2, got - 2);
      }
      (ack == kCtrlOk ? dev_.ctrl_ok_ : dev_.ctrl_err_).fetch_add(1, std::memory_order_relaxed);
      write_at(chain_.writable(), 0, &ack, 1);
      q_->push(chain_.head(), 1);
    }
    return n;
  }

 private:
  virtq::Chain chain_;
  uint8_t buf_[kMaxCommand];
};

// ------------------------------------------------------------------ device

NetDevice::NetDevice(const NetOptions& o, Switch& sw) : SwitchPort(o.name), opts_(o), sw_(sw) {}

Result<std::unique_ptr<NetDevice>> NetDevice::create(const NetOptions& o, Switch& sw) {
  if (o.queue_pairs == 0 || o.queue_pairs > kMaxPairs) return Errc::kInvalidArgument;
  if (o.queue_size == 0 || (o.queue_size & (o.queue_size - 1)) != 0) return Errc::kQueueBadSize;
  if (o.mtu < 68) return Errc::kInvalidArgument;
  if (o.mode == PortMode::kSource &&
      (o.source_frame < 60 || o.source_frame > uint32_t{o.mtu} + kEthHdrLen))
    return Errc::kInvalidArgument;
  if (o.mac == 0 || is_multicast(o.mac) || o.mac > 0xffffffffffffull) return Errc::kInvalidArgument;
  std::unique_ptr<NetDevice> d(new NetDevice(o, sw));
  for (int i = 0; i < 6; ++i) d->config_.mac[i] = static_cast<uint8_t>(o.mac >> (40 - 8 * i));
  d->config_.status = kStatusLinkUp;
  d->config_.max_virtqueue_pairs = o.queue_pairs;
  d->config_.mtu = o.mtu;
  d->mac_ = o.mac;
  d->pairs_set_.store(o.queue_pairs, std::memory_order_relaxed);
  d->queues_.init({&sw.worker()}, d->max_queues());
  d->rx_.assign(o.queue_pairs, nullptr);
  d->set_security(PortSecurity{o.mac_lock ? o.mac : 0, o.max_macs, o.flood_rate});
  if (Status s = sw.add_port(*d); !s.ok()) return s.error();
  return d;
}

NetDevice::~NetDevice() {
  for (uint16_t p = 0; p < opts_.queue_pairs; ++p) rx_[p] = nullptr;
  publish_rx();
  queues_.stop_all();
  sw_.remove_port(*this);
}

uint64_t NetDevice::device_features() const {
  uint64_t f = (1ull << virtq::kFVersion1) | (1ull << virtq::kFEventIdx) | (1ull << virtq::kFIndirectDesc) |
               (1ull << virtq::kFInOrder) | (1ull << kFCsum) | (1ull << kFGuestCsum) | (1ull << kFMtu) |
               (1ull << kFMac) | (1ull << kFMrgRxbuf) | (1ull << kFStatus) | (1ull << kFCtrlVq) |
               (1ull << kFCtrlRx) | (1ull << kFCtrlMacAddr);
  if (opts_.queue_pairs > 1) f |= 1ull << kFMq;
  return f;
}

virtq::InOrderBatching NetDevice::batching(uint16_t q) const {
  // Transmit buffers' lengths mean nothing to the driver: one used element
  // per burst. Receive and control buffers carry a length each.
  bool tx = q < 2 * opts_.queue_pairs && (q & 1);
  return tx ? virtq::InOrderBatching::kBatch : virtq::InOrderBatching::kPerBuffer;
}

std::span<const uint8_t> NetDevice::config() const {
  std::lock_guard lk(config_mu_);
  config_copy_ = config_;
  return {reinterpret_cast<const uint8_t*>(&config_copy_), sizeof config_copy_};
}

Status NetDevice::write_config(uint32_t offset, std::span<const uint8_t> data) {
  // Only a legacy driver (no VERSION_1) may write the MAC (5.1.4); nothing
  // else is writable.
  if (!(features_ >> virtq::kFVersion1 & 1) && offset + data.size() <= 6) {
    std::lock_guard lk(config_mu_);
    if (opts_.mac_lock) {
      // A locked port's MAC is the operator's: the same bytes are accepted.
      for (size_t i = 0; i < data.size(); ++i)
        if (data[i] != static_cast<uint8_t>(opts_.mac >> (40 - 8 * (offset + i)))) return Errc::kMacLocked;
      return {};
    }
    std::memcpy(config_.mac + offset, data.data(), data.size());
    return {};
  }
  return Errc::kConfigOutOfRange;
}

void NetDevice::set_driver_features(uint64_t f) {
  features_ = f;
  mrg_ = (f >> kFMrgRxbuf) & 1;
  guest_csum_ = (f >> kFGuestCsum) & 1;
  // 5.1.6: the header has num_buffers with VERSION_1 or MRG_RXBUF.
  hdr_len_ = (mrg_ || ((f >> virtq::kFVersion1) & 1)) ? 12 : 10;
}

Status NetDevice::queue_started(const QueueBinding& b) {
  uint16_t i = b.index;
  uint16_t pair = static_cast<uint16_t>(i / 2);
  if (i < 2 * opts_.queue_pairs && !(i & 1)) {
    auto q = std::make_unique<NetRxQueue>(*this, b, pair);
    NetRxQueue* raw = q.get();
    queues_.start(i, std::move(q));
    rx_[pair] = raw;
    publish_rx();
  } else if (i < 2 * opts_.queue_pairs) {
    queues_.start(i, std::make_unique<NetTxQueue>(*this, b, pair));
  } else if (i == 2 * opts_.queue_pairs) {
    queues_.start(i, std::make_unique<NetCtrlQueue>(*this, b));
  } else {
    return Errc::kVringIndexOutOfRange;
  }
  return {};
}

void NetDevice::queue_stopped(uint16_t i) {
  if (i < 2 * opts_.queue_pairs && !(i & 1) && rx_[i / 2] != nullptr) {
    rx_[i / 2] = nullptr;
    publish_rx();  // no transmit queue delivers into it after this
  }
  queues_.stop(i);
}

void NetDevice::call_fd_changed(uint16_t i, int fd) { queues_.set_call_fd(i, fd); }

void NetDevice::reset() {
  features_ = 0;
  set_driver_features(0);
  filter_ = RxFilter{};
  promisc_view_.store(true, std::memory_order_relaxed);
  pairs_set_.store(opts_.queue_pairs, std::memory_order_relaxed);
  std::lock_guard lk(config_mu_);
  for (int i = 0; i < 6; ++i) config_.mac[i] = static_cast<uint8_t>(opts_.mac >> (40 - 8 * i));
  mac_ = opts_.mac;
}

uint64_t NetDevice::mac() const {
  std::lock_guard lk(config_mu_);
  uint64_t m = 0;
  for (int i = 0; i < 6; ++i) m = m << 8 | config_.mac[i];
  return m;
}

void NetDevice::publish_rx() {
  const RxSet* cur = rxset_.load(std::memory_order_relaxed);
  RxSet* next = cur == &rxsets_[0] ? &rxsets_[1] : &rxsets_[0];
  next->n = 0;
  for (NetRxQueue* q : rx_)
    if (q != nullptr) next->q[next->n++] = q;
  rxset_.store(next, std::memory_order_release);
  sw_.worker().sync();  // the worker's bursts from now on see `next` only
}

void NetDevice::deliver(const Packet& p, uint16_t qp) {
  const RxSet* s = rxset_.load(std::memory_order_acquire);
  uint16_t n = std::min(s->n, pairs_set_.load(std::memory_order_relaxed));
  if (n == 0) {
    stats().drop(Drop::kRxNotReady);
    return;
  }
  if (p.len > uint32_t{opts_.mtu} + kEthHdrLen + kVlanTag) {
    stats().drop(Drop::kOversize);
    return;
  }
  s->q[qp < n ? qp : qp % n]->receive(p);
}

bool NetDevice::accepts(uint64_t dst) const {
  const RxFilter& f = filter_;
  if (f.promisc || dst == 0xffffffffffffull) return true;
  if (is_multicast(dst)) {
    if (f.allmulti || f.multi_overflow) return true;
    return std::find(f.multi, f.multi + f.nmulti, dst) != f.multi + f.nmulti;
  }
  if (dst == mac_ || f.uni_overflow) return true;
  return std::find(f.uni, f.uni + f.nuni, dst) != f.uni + f.nuni;
}

uint8_t NetDevice::control(uint8_t cls, uint8_t cmd, const uint8_t* data, uint32_t len) {
  auto has = [&](unsigned bit) { return (features_ >> bit) & 1; };
  switch (cls) {
    case kCtrlRx:
      if (!has(kFCtrlRx) || len != 1 || (cmd != kCtrlRxPromisc && cmd != kCtrlRxAllmulti)) return kCtrlErr;
      (cmd == kCtrlRxPromisc ? filter_.promisc : filter_.allmulti) = data[0] != 0;
      promisc_view_.store(filter_.promisc, std::memory_order_relaxed);
      return kCtrlOk;
    case kCtrlMac:
      if (cmd == kCtrlMacAddrSet) {
        if (!has(kFCtrlMacAddr) || len != 6) return kCtrlErr;
        uint64_t m = 0;
        for (int i = 0; i < 6; ++i) m = m << 8 | data[i];
        if (is_multicast(m) || m == 0) return kCtrlErr;
        if (opts_.mac_lock && m != opts_.mac) return kCtrlErr;  // the operator's MAC; see NetOptions
        std::lock_guard lk(config_mu_);
        std::memcpy(config_.mac, data, 6);
        mac_ = m;
        return kCtrlOk;
      }
      if (cmd == kCtrlMacTableSet) {
        // Two tables back to back: unicast, then multicast; each a le32
        // count and that many 6-byte addresses. The lengths must add up.
        if (!has(kFCtrlRx)) return kCtrlErr;
        RxFilter f = filter_;
        uint32_t off = 0;
        for (int t = 0; t < 2; ++t) {
          if (len - off < 4) return kCtrlErr;
          uint32_t n;
          std::memcpy(&n, data + off, 4);
          off += 4;
          if (n > (len - off) / 6) return kCtrlErr;
          uint64_t* dst = t == 0 ? f.uni : f.multi;
          uint32_t keep = std::min<uint32_t>(n, RxFilter::kMaxMacs);
          for (uint32_t k = 0; k < keep; ++k) {
            uint64_t m = 0;
            for (int i = 0; i < 6; ++i) m = m << 8 | data[off + 6 * k + static_cast<uint32_t>(i)];
            dst[k] = m;
          }
          (t == 0 ? f.nuni : f.nmulti) = keep;
          (t == 0 ? f.uni_overflow : f.multi_overflow) = n > RxFilter::kMaxMacs;
          off += 6 * n;
        }
        if (off != len) return kCtrlErr;
        filter_ = f;
        return kCtrlOk;
      }
      return kCtrlErr;
    case kCtrlMq: {
      if (!has(kFMq) || cmd != kCtrlMqVqPairsSet || len != 2) return kCtrlErr;
      uint16_t n;
      std::memcpy(&n, data, 2);
      if (n < kMqPairsMin || n > opts_.queue_pairs) return kCtrlErr;
      pairs_set_.store(n, std::memory_order_relaxed);
      return kCtrlOk;
    }
    default:
      return kCtrlErr;
  }
}

}  // namespace sluice::net
