// Device side of a split virtqueue (virtio 1.2, section 2.7).
//
// A passive structure over guest memory (STYLE.md rule 2): it holds ring
// indices and guest addresses, takes the guest memory it works on, and does no
// I/O. Single-threaded: one worker owns a running queue; the control thread
// touches it only while the worker has it quiesced.
//
// Security model: the descriptor table, the rings and every index in them are
// written by the guest while we read them. Each guest value is read once,
// bounded, then used; any violation marks the queue broken (sticky, with a
// named reason). No guest value can make us read or write outside the guest's
// mapped regions.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "dataplane/base/result.h"
#include "dataplane/memory/guest_fault.h"
#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/chain.h"
#include "dataplane/virtq/ring.h"

namespace sluice::virtq {

// How an in-order queue reports completions (2.7.9 with VIRTIO_F_IN_ORDER).
enum class InOrderBatching : uint8_t {
  // One used element per flush: the id of the batch's last buffer, the used
  // index advanced by the batch's buffer count. Buffers before the last one are
  // reported as fully used, so use it only where the driver ignores their
  // length (a transmit queue, a request queue whose status is in the data).
  kBatch,
  // One used element per buffer, each with its own length (a receive queue).
  kPerBuffer,
};

struct QueueConfig {
  uint16_t size = 0;       // power of two, 1..32768
  uint64_t desc_addr = 0;  // guest physical addresses of the three areas
  uint64_t avail_addr = 0;
  uint64_t used_addr = 0;
  bool event_idx = false;  // VIRTIO_RING_F_EVENT_IDX negotiated
  bool indirect = false;   // VIRTIO_RING_F_INDIRECT_DESC negotiated
  bool in_order = false;   // VIRTIO_F_IN_ORDER negotiated
  InOrderBatching batching = InOrderBatching::kBatch;

  static QueueConfig from_features(uint64_t features, uint16_t size, uint64_t desc,
                                   uint64_t avail, uint64_t used);
};

// Counters a worker exposes to the control plane.
struct QueueStats {
  uint64_t popped = 0;
  uint64_t pushed = 0;
  uint64_t used_elems = 0;  // used ring elements written (== pushed unless batching)
  uint64_t flushes = 0;     // used index publications
};

// Cache-line aligned: a queue's cursors are written on every request by the
// worker that owns it, and must not share a line with anything another thread
// writes (another queue, the driver side in tests, control-plane state).
class alignas(64) SplitQueue {
 public:
  // Longest indirect table accepted (entries); longer tables break the queue.
  static constexpr uint32_t kMaxIndirect = 1024;

  SplitQueue() = default;
  SplitQueue(const SplitQueue&) = delete;
  SplitQueue& operator=(const SplitQueue&) = delete;

  // Sets size, ring addresses and ring features. Validates size and alignment.
  // In-order queues get their head-count storage here (created, or resized
  // when the size changed); queues without IN_ORDER have none.
  Status configure(const QueueConfig& cfg);
  // Binds the queue to a memory table and translates the three ring areas
  // (each must be contiguous in one region). Call again after the guest's
  // memory changes; pending completions are kept.
  Status attach(std::shared_ptr<const MemoryTable> mem);
  // SET_VRING_BASE: next avail index to read; the used index starts there too
  // (split ring: the device's used index equals last_avail when idle).
  void set_base(uint16_t last_avail_idx);
  // Sets the avail and used cursors separately (inflight recovery: requests
  // between the two are being resubmitted by head).
  void set_indices(uint16_t last_avail_idx, uint16_t used_idx);
  // The used index and a used element's id as they are in guest memory.
  uint16_t ring_used_idx() const noexcept;
  uint32_t ring_used_id(uint16_t slot_idx) const noexcept;
  // Parses the chain at `head` without touching the avail cursor (inflight
  // resubmission). Errors break the queue, as for pop().
  Result<bool> pop_head(uint16_t head, Chain& c);
  // GET_VRING_BASE: publishes any pending completions first (the base must
  // agree with what the driver has seen), then returns last_avail. The queue
  // stops: pop() refuses until it is attached again.
  uint16_t stop();
  // Device reset / disconnect: forgets everything, including the in-order
  // head-count storage. Safe on a queue that was never configured.
  void reset() noexcept;

  bool configured() const noexcept { return size_ != 0; }
  bool running() const noexcept { return desc_ != nullptr; }
  bool broken() const noexcept { return broken_.code != Errc::kOk; }
  Error broken_reason() const noexcept { return broken_; }
  uint16_t size() const noexcept { return size_; }
  bool in_order() const noexcept { return cfg_.in_order; }
  // Ring addresses and features as configured (an offload target programs a
  // device with them).
  const QueueConfig& config() const noexcept { return cfg_; }
  // The memory table the queue is attached to (null when stopped).
  const std::shared_ptr<const MemoryTable>& memory() const noexcept { return mem_; }

  // Pops the next available chain into c. Returns false when the ring is
  // empty, an error when the ring is malformed (the queue is then broken).
  Result<bool> pop(Chain& c) {
    if (broken()) [[unlikely]]
      return broken_;
    if (!running()) [[unlikely]]
      return Errc::kQueueNotReady;
    // pop_impl answers in a register (1 chain, 0 empty, -1 broken): a
    // Result returned through memory costs a store-forwarding stall per pop.
    int r = cfg_.in_order ? pop_impl<true>(c) : pop_impl<false>(c);
    if (r < 0) [[unlikely]]
      return broken_;
    return r != 0;
  }
  // Prefetches what the chains `ahead` pops from now will touch, so that a
  // burst's cache misses overlap instead of queueing one per chain. A hint
  // only: values read here are not trusted (a wrong one wastes a prefetch,
  // the pop still checks everything). In-order queues know the heads
  // (counted as single-descriptor chains): the descriptor line 16 entries on
  // and the buffer of the chain `ahead` on. Other queues go through the avail
  // ring in stages: its entry 2 * ahead on, the descriptor named by the entry
  // `ahead` on (cached by then), the buffer of the one ahead / 2 on. Buffers
  // are fetched for reading or (write) owned for writing, two lines each;
  // with `keep`, the buffer's first `keep` bytes (a header the caller
  // rewrites only when it changed) are fetched for reading when they sit in
  // a line of their own, and the two lines owned start after them.
  void prefetch_ahead(uint16_t ahead, bool write, uint32_t keep = 0) noexcept {
    if (desc_ == nullptr) return;
    uint16_t known = static_cast<uint16_t>(shadow_avail_ - last_avail_);
    uint16_t buf_head;
    if (cfg_.in_order) {
      if (!head_known_) return;
      __builtin_prefetch(desc_ + static_cast<size_t>((next_avail_head_ + ahead + 16) & mask_) * sizeof(Desc));
      if (known <= ahead) return;
      buf_head = static_cast<uint16_t>(next_avail_head_ + ahead);
    } else {
      __builtin_prefetch(avail_ + avail_entry_off((last_avail_ + 2 * ahead) & mask_));
      if (known > ahead) {
        uint16_t h = load_relaxed<uint16_t>(avail_ + avail_entry_off((last_avail_ + ahead) & mask_));
        __builtin_prefetch(desc_ + static_cast<size_t>(h & mask_) * sizeof(Desc));
      }
      uint16_t half = static_cast<uint16_t>(ahead / 2);
      if (half == 0 || known <= half) return;
      buf_head = load_relaxed<uint16_t>(avail_ + avail_entry_off((last_avail_ + half) & mask_));
    }
    const std::byte* d = desc_ + static_cast<size_t>(buf_head & mask_) * sizeof(Desc);
    uint64_t len = 1;
    std::byte* p = memp_->translate(load_relaxed<uint64_t>(d), &len, hint_);
    if (p == nullptr) return;
    // Two lines: a small frame and its header usually straddle a line.
    if (write) {
      const std::byte* w = p + keep;
      if (((reinterpret_cast<uintptr_t>(p) ^ reinterpret_cast<uintptr_t>(w)) & ~uintptr_t{63}) != 0)
        __builtin_prefetch(p, 0);
      prefetch_for_write(w);
      prefetch_for_write(w + 64);
    } else {
      __builtin_prefetch(p, 0);
      __builtin_prefetch(p + 64, 0);
    }
  }
  // The start of a burst: reads the avail index if every chain seen so far
  // was popped, then prefetches the first `n` chains (see prefetch_ahead).
  void prefetch_burst(uint16_t n, bool write) noexcept {
    if (desc_ == nullptr || broken() || (cfg_.in_order && !head_known_)) return;
    if (last_avail_ == shadow_avail_) {
      uint16_t idx = load_acquire<uint16_t>(avail_ + kAvailIdxOff);
      if (static_cast<uint16_t>(idx - last_avail_) > size_) return;  // pop() will break the queue
      shadow_avail_ = idx;
    }
    for (uint16_t k = 0; k < n; ++k) prefetch_ahead(k, write);
  }
  // PREFETCHW: the line arrives owned, so the stores that follow need no
  // second round trip. GCC emits it only with -mprfchw; CPUs without it
  // execute it as a NOP.
  static void prefetch_for_write(const void* p) noexcept {
#if defined(__x86_64__)
    asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
    __builtin_prefetch(p, 1);
#endif
  }
  // Whether publish() demotes the used-ring lines it wrote (CLDEMOTE): a
  // line moves from this core's private caches to the shared one, where the
  // driver's read finds it instead of snooping this core. Plain queues only:
  // measured against dpdk-testpmd's virtio-user at 64 B, plain rxonly
  // gained 14-31% and plain loopback 0-8%, while in-order queues gained
  // nothing (rxonly, txonly) or lost 11% (loopback). A hint: a NOP on CPUs
  // without it. Off suits a driver on this core's SMT sibling, which shares
  // the private caches. Process-wide; set before queues run.
  static void set_cache_demote(bool on) noexcept { cache_demote_.store(on, std::memory_order_relaxed); }
  static bool cache_demote() noexcept { return cache_demote_.load(std::memory_order_relaxed); }
  // Gives back the last `nbufs` popped chains, which occupied `ndescs` table
  // entries in all: both the avail cursor and the in-order head cursor rewind.
  void discard(uint16_t nbufs, uint16_t ndescs) noexcept;
  // Records a completion; nothing is visible to the driver until flush().
  // A broken queue takes none (it is not running: fail() stops it); the
  // driver must reset it (2.1.2).
  void push(uint16_t head, uint32_t len) noexcept {
    if (!running()) [[unlikely]]
      return;
    ++stats_.pushed;
    if (cfg_.in_order) {
      if (cfg_.batching == InOrderBatching::kBatch && npending_ != 0) [[likely]] {
        // Extend the open batch: its element names the newest buffer.
        pending_[npending_ - 1] = UsedElem{head, len};
        ++nheads_[npending_ - 1];
        ++pending_bufs_;
        return;
      }
      return push_in_order(head, len);
    }
    // Written straight into the ring; invisible until flush() moves used->idx.
    std::byte* e = used_ + used_entry_off(shadow_used_ & mask_);
    store_used_elem(e, head, len);
    ++shadow_used_;
    ++pending_bufs_;
    ++stats_.used_elems;
  }
  // Publishes recorded completions with one release store of the used index.
  // Returns true when the driver asked to be interrupted (EVENT_IDX or the
  // NO_INTERRUPT flag, 2.7.7.2).
  bool flush() noexcept;
  // flush() in two halves, for a caller that publishes several queues and
  // pays for one full fence between the halves: publish() makes the
  // completions visible (false: there were none); after the caller's
  // seq_cst fence, notify_needed() says whether the driver asked to be
  // interrupted for what publish() made visible.
  bool publish() noexcept;
  bool notify_needed() noexcept;
  // Kick suppression (2.7.10): with enable, asks the driver to kick for the
  // next buffer (then re-check with has_available() to close the race).
  void set_kick_notification(bool enable) noexcept;
  // True when the driver has made buffers available that we have not popped.
  bool has_available() noexcept;

  // --- Guest memory that faults (dataplane/memory/guest_fault.h).
  // Whether a page of this queue's memory has faulted before: one load, so
  // request paths test it first and look at their chain only when it is set.
  bool memory_poisoned() const noexcept { return poison_ != nullptr && !poison_->empty(); }
  // Whether a chain's buffers touch a page that faulted.
  bool chain_poisoned(const Chain& c) const noexcept;
  enum class FaultHit : uint8_t {  // in rising order of severity
    kNone,     // no fault was pending
    kBuffer,   // a page of this queue's guest memory (a request's buffer)
    kOutside,  // an address outside this queue's memory (an inflight region)
    kRing,     // this queue's rings: the queue is broken
  };
  // Takes this thread's pending faults (fault::take()), which accesses made
  // for this queue: each fault's page inside this queue's memory goes on the
  // memory's poison list (one log line per new page), and a fault on the
  // rings breaks the queue (kGuestMemoryFault, whatever broke it first:
  // a faulted ring reads as zeroes and may look malformed). Returns the
  // worst hit.
  FaultHit take_faults() noexcept;
  // The same for one fault the caller took.
  FaultHit note_fault(const fault::Fault& f) noexcept;
  // Breaks the queue for a reason found outside it (sticky, like a ring error).
  void mark_broken(Errc e) noexcept { (void)fail(e); }
  // Where the fault that broke the queue was (0: none), and why.
  uint64_t fault_gpa() const noexcept { return fault_gpa_; }
  fault::Cause fault_cause() const noexcept { return fault_cause_; }

  uint16_t last_avail_idx() const noexcept { return last_avail_; }
  uint16_t used_idx() const noexcept { return used_idx_; }
  uint16_t next_avail_head() const noexcept { return next_avail_head_; }
  // Completions recorded but not yet flushed (buffers, not elements).
  uint32_t pending_buffers() const noexcept { return pending_bufs_; }
  // In-order head-count storage: capacity in elements, 0 when never created.
  uint32_t nheads_capacity() const noexcept { return nheads_cap_; }
  const QueueStats& stats() const noexcept { return stats_; }

 private:
  template <bool InOrder>
  int pop_impl(Chain& c);
  Status walk_chain(uint16_t head, Chain& c);
  void push_in_order(uint16_t head, uint32_t len) noexcept;
  Errc walk_indirect(const Desc& d, Chain& c, bool& seen_write);
  Errc add_buffer(const Desc& d, Chain& c, bool& seen_write);
  Error fail(Errc e) noexcept;
  void halt() noexcept;
  void drop_memory() noexcept;  // stopped, reset or reconfigured: no rings, no memory table
  void release_nheads() noexcept;
  void demote_used(uint16_t from, uint16_t to) const noexcept;

  static inline std::atomic<bool> cache_demote_{true};

  QueueConfig cfg_{};
  uint16_t size_ = 0;
  uint16_t mask_ = 0;
  std::shared_ptr<const MemoryTable> mem_;
  const MemoryTable* memp_ = nullptr;
  fault::PoisonList* poison_ = nullptr;  // mem_'s, while attached
  std::byte* areas_[3] = {};  // desc, avail, used as attached (kept when halted: faults are placed by them)
  const GuestRegion* hint_ = MemoryTable::no_region();  // last region a buffer hit
  std::byte* desc_ = nullptr;
  std::byte* avail_ = nullptr;
  std::byte* used_ = nullptr;

  uint16_t last_avail_ = 0;    // next avail ring entry to read
  uint16_t shadow_avail_ = 0;  // last avail->idx we read
  uint16_t used_idx_ = 0;      // used->idx as published
  uint16_t notify_old_ = 0;    // used->idx before the last publish()
  uint16_t shadow_used_ = 0;   // used index including unflushed completions
  uint16_t next_avail_head_ = 0;  // in-order: derived head of the next chain
  bool head_known_ = false;       // in-order: false until the first pop after set_base

  // In-order completion storage ("nheads"): pending used elements and how many
  // buffers each covers. Created by configure() for in-order queues only.
  std::unique_ptr<UsedElem[]> pending_;
  std::unique_ptr<uint16_t[]> nheads_;
  uint32_t nheads_cap_ = 0;
  uint32_t npending_ = 0;     // elements
  uint32_t pending_bufs_ = 0;  // buffers

  Error broken_{};
  uint64_t fault_gpa_ = 0;
  fault::Cause fault_cause_ = fault::Cause::kOther;
  QueueStats stats_{};
};

}  // namespace sluice::virtq
