#include "dataplane/virtq/split_queue.h"

#include <algorithm>
#include <atomic>

#include "dataplane/base/log.h"

namespace sluice::virtq {

QueueConfig QueueConfig::from_features(uint64_t features, uint16_t size, uint64_t desc,
                                       uint64_t avail, uint64_t used) {
  QueueConfig c;
  c.size = size;
  c.desc_addr = desc;
  c.avail_addr = avail;
  c.used_addr = used;
  c.event_idx = (features >> kFEventIdx) & 1;
  c.indirect = (features >> kFIndirectDesc) & 1;
  c.in_order = (features >> kFInOrder) & 1;
  return c;
}

Status SplitQueue::configure(const QueueConfig& cfg) {
  // 2.7: split queue sizes are powers of two, at most 32768.
  if (cfg.size == 0 || cfg.size > kMaxQueueSize || (cfg.size & (cfg.size - 1)) != 0)
    return Errc::kQueueBadSize;
  // 2.7.2 alignment: descriptor table 16, available ring 2, used ring 4.
  if (cfg.desc_addr % 16 != 0 || cfg.avail_addr % 2 != 0 || cfg.used_addr % 4 != 0)
    return Errc::kQueueMisaligned;
  if (cfg.in_order) {
    // Head-count storage is created with the queue, resized with it. Pending
    // completions were flushed by stop() before any reconfiguration.
    if (nheads_cap_ != cfg.size) {
      release_nheads();
      pending_ = std::make_unique<UsedElem[]>(cfg.size);
      nheads_ = std::make_unique<uint16_t[]>(cfg.size);
      nheads_cap_ = cfg.size;
    }
  } else {
    release_nheads();
  }
  npending_ = 0;
  pending_bufs_ = 0;
  cfg_ = cfg;
  size_ = cfg.size;
  mask_ = static_cast<uint16_t>(cfg.size - 1);
  drop_memory();
  return {};
}

void SplitQueue::release_nheads() noexcept {
  // Never-created storage is null: resetting a null unique_ptr frees nothing.
  pending_.reset();
  nheads_.reset();
  nheads_cap_ = 0;
  npending_ = 0;
}

Status SplitQueue::attach(std::shared_ptr<const MemoryTable> mem) {
  if (!configured() || mem == nullptr) return Errc::kQueueNotReady;
  auto d = mem->translate_exact(cfg_.desc_addr, desc_table_bytes(size_));
  auto a = mem->translate_exact(cfg_.avail_addr, avail_ring_bytes(size_));
  auto u = mem->translate_exact(cfg_.used_addr, used_ring_bytes(size_));
  if (!d.ok() || !a.ok() || !u.ok()) return Errc::kQueueRingNotContiguous;
  desc_ = areas_[0] = d.value();
  avail_ = areas_[1] = a.value();
  used_ = areas_[2] = u.value();
  memp_ = mem.get();
  poison_ = &mem->poison();
  hint_ = MemoryTable::no_region();
  mem_ = std::move(mem);
  // A broken queue stays halted until reset(): attached (the front-end's
  // restart is accepted, as it always was), but it pops, pushes and
  // publishes nothing.
  if (broken()) halt();
  return {};
}

void SplitQueue::set_base(uint16_t last_avail_idx) {
  last_avail_ = last_avail_idx;
  shadow_avail_ = last_avail_idx;
  used_idx_ = last_avail_idx;
  shadow_used_ = last_avail_idx;
  // In-order: the avail index says nothing about where the driver's table
  // cursor is (chains may be several descriptors long), so the first chain
  // after a (re)start takes its head from the avail ring, which the driver
  // still fills; heads are derived from there on.
  next_avail_head_ = 0;
  head_known_ = false;
  npending_ = 0;
  pending_bufs_ = 0;
}

void SplitQueue::set_indices(uint16_t last_avail_idx, uint16_t used_idx) {
  set_base(last_avail_idx);
  used_idx_ = shadow_used_ = used_idx;
}

uint16_t SplitQueue::ring_used_idx() const noexcept {
  return running() ? load_acquire<uint16_t>(used_ + kUsedIdxOff) : used_idx_;
}

uint32_t SplitQueue::ring_used_id(uint16_t slot_idx) const noexcept {
  return running() ? load_relaxed<uint32_t>(used_ + used_entry_off(slot_idx & mask_)) : UINT32_MAX;
}

uint16_t SplitQueue::stop() {
  if (running()) (void)flush();
  drop_memory();
  return last_avail_;
}

void SplitQueue::reset() noexcept {
  release_nheads();
  cfg_ = QueueConfig{};
  size_ = mask_ = 0;
  drop_memory();
  fault_gpa_ = 0;
  last_avail_ = shadow_avail_ = used_idx_ = shadow_used_ = next_avail_head_ = 0;
  head_known_ = false;
  pending_bufs_ = 0;
  broken_ = Error{};
  stats_ = QueueStats{};
}

Error SplitQueue::fail(Errc e) noexcept {
  halt();
  if (!broken()) {
    broken_ = Error(e);
    LOG_WARN("virtq", "queue broken: %.*s (last_avail=%u)",
             static_cast<int>(errc_name(e).size()), errc_name(e).data(), last_avail_);
  }
  return broken_;
}

// One direct buffer: translate with a shrinking length and loop, so a buffer
// that spans two regions becomes two segments.
[[gnu::always_inline]] inline Errc SplitQueue::add_buffer(const Desc& d, Chain& c,
                                                          bool& seen_write) {
  bool writable = (d.flags & kDescFWrite) != 0;
  if (!writable & seen_write) return Errc::kReadableAfterWritable;
  seen_write |= writable;
  if (d.len == 0) [[unlikely]]
    return Errc::kOk;
  uint64_t end;
  if (__builtin_add_overflow(d.addr, static_cast<uint64_t>(d.len) - 1, &end)) [[unlikely]]
    return Errc::kDescAddressOverflow;
  uint64_t addr = d.addr;
  uint64_t left = d.len;
  do {
    uint64_t chunk = left;
    std::byte* p = memp_->translate(addr, &chunk, hint_);
    if (p == nullptr) [[unlikely]]
      return Errc::kDescNotMapped;
    if (!c.add(p, chunk, writable)) [[unlikely]]
      return Errc::kChainTooManySegments;
    addr += chunk;
    left -= chunk;
  } while (left > 0);
  return Errc::kOk;
}

Errc SplitQueue::walk_indirect(const Desc& d, Chain& c, bool& seen_write) {
  if (!cfg_.indirect) return Errc::kIndirectNotNegotiated;
  // 2.7.5.3.1: INDIRECT and NEXT together are forbidden.
  if (d.flags & kDescFNext) return Errc::kIndirectWithNext;
  if (d.len == 0 || d.len % sizeof(Desc) != 0) return Errc::kIndirectBadLength;
  uint32_t n = d.len / static_cast<uint32_t>(sizeof(Desc));
  if (n > kMaxIndirect) return Errc::kIndirectTooLong;
  uint64_t end;
  if (__builtin_add_overflow(d.addr, static_cast<uint64_t>(d.len) - 1, &end))
    return Errc::kDescAddressOverflow;
  auto table = memp_->translate_exact(d.addr, d.len);
  if (!table.ok()) return Errc::kDescNotMapped;
  uint32_t i = 0;
  for (uint32_t count = 0;; ++count) {
    if (count >= n) return Errc::kChainTooLong;  // a loop inside the table
    Desc x = read_desc(table.value() + static_cast<size_t>(i) * sizeof(Desc));
    if (x.flags & kDescFIndirect) return Errc::kIndirectNested;
    Errc e = add_buffer(x, c, seen_write);
    if (e != Errc::kOk) return e;
    if (!(x.flags & kDescFNext)) return Errc::kOk;
    if (x.next >= n) return Errc::kNextOutOfRange;
    i = x.next;
  }
}

[[gnu::always_inline]] inline Status SplitQueue::walk_chain(uint16_t head, Chain& c) {
  c.clear(head);
  bool seen_write = false;
  uint16_t idx = head;
  uint32_t count = 0;
  // The chain's size so far, kept in a register: re-reading c.bytes_ here
  // would wait on the stores add() just made to a slot chosen by a flag
  // loaded from the descriptor.
  uint64_t total = 0;
  for (;;) {
    if (++count > size_) [[unlikely]]
      return fail(Errc::kChainTooLong);
    Desc d = read_table_desc(desc_ + static_cast<size_t>(idx) * sizeof(Desc));
    if (d.flags & kDescFIndirect) {
      Errc e = walk_indirect(d, c, seen_write);
      if (e != Errc::kOk) return fail(e);
      total = c.bytes_[0] + c.bytes_[1];  // all the chain's buffers are in the table
      break;
    }
    Errc e = add_buffer(d, c, seen_write);
    if (e != Errc::kOk) [[unlikely]]
      return fail(e);
    total += d.len;
    if (!(d.flags & kDescFNext)) break;
    if (d.next >= size_) [[unlikely]]
      return fail(Errc::kNextOutOfRange);
    idx = d.next;
  }
  // 2.7.5: a chain is at most 4 GiB in total. Each descriptor is below 4 GiB
  // and a chain has at most 32768 + 1024 of them, so the sum cannot overflow.
  if (total > UINT32_MAX) [[unlikely]]
    return fail(Errc::kChainTooLarge);
  c.table_descs_ = static_cast<uint16_t>(count);
  return {};
}

template <bool InOrder>
int SplitQueue::pop_impl(Chain& c) {
  if (last_avail_ == shadow_avail_) {
    // Acquire: the ring entries and descriptors the driver wrote before it
    // published this index are visible after the load.
    shadow_avail_ = load_acquire<uint16_t>(avail_ + kAvailIdxOff);
    uint16_t ahead = static_cast<uint16_t>(shadow_avail_ - last_avail_);
    if (ahead > size_) return (void)fail(Errc::kAvailIndexTooFar), -1;
    if (ahead == 0) return 0;
  }
  uint16_t head;
  if constexpr (InOrder) {
    if (head_known_) [[likely]] {
      head = next_avail_head_;  // derived, not read (the avail index still is)
    } else {
      head = load_relaxed<uint16_t>(avail_ + avail_entry_off(last_avail_ & mask_));
      if (head >= size_) return (void)fail(Errc::kHeadOutOfRange), -1;
      next_avail_head_ = head;
      head_known_ = true;
    }
  } else {
    head = load_relaxed<uint16_t>(avail_ + avail_entry_off(last_avail_ & mask_));
    if (head >= size_) return (void)fail(Errc::kHeadOutOfRange), -1;
  }
  if (Status w = walk_chain(head, c); !w.ok()) return -1;  // walk_chain broke the queue
  uint32_t count = c.table_descs_;
  ++last_avail_;
  if constexpr (InOrder) next_avail_head_ = static_cast<uint16_t>((next_avail_head_ + count) & mask_);
  ++stats_.popped;
  return 1;
}

void SplitQueue::discard(uint16_t nbufs, uint16_t ndescs) noexcept {
  if (nbufs == 0) return;
  last_avail_ = static_cast<uint16_t>(last_avail_ - nbufs);
  if (cfg_.in_order) next_avail_head_ = static_cast<uint16_t>((next_avail_head_ - ndescs) & mask_);
  stats_.popped -= nbufs;
}

// The slow path of push() for in-order queues: a new used element (per-buffer
// policy, or the first completion of a batch). push() extends an open batch
// inline.
void SplitQueue::push_in_order(uint16_t head, uint32_t len) noexcept {
  if (npending_ == nheads_cap_) (void)flush();  // cannot happen with honest callers
  pending_[npending_] = UsedElem{head, len};
  nheads_[npending_] = 1;
  ++npending_;
  ++pending_bufs_;
}

namespace {
void demote_line(const std::byte* p) noexcept {
#if defined(__x86_64__)
  asm volatile("cldemote %0" : : "m"(*p));
#else
  (void)p;
#endif
}
}  // namespace

bool SplitQueue::publish() noexcept {
  if (!running()) return false;
  // The notify decision after the caller's fence reads the driver's flags
  // (or used_event); asking for that line now lets its transfer overlap the
  // one the fence waits for (our used-index store), instead of following it.
  // Coherence keeps the line current: a driver write after this invalidates
  // it, and the read after the fence then fetches it again.
  if (pending_bufs_ != 0)
    __builtin_prefetch(cfg_.event_idx ? avail_ + avail_entry_off(size_) : avail_, 0);
  if (cfg_.in_order) {
    // 2.7.9 in-order: each element is written at the slot of the first buffer
    // it covers, and the used index skips forward by its head count.
    uint16_t at = shadow_used_;
    for (uint32_t i = 0; i < npending_; ++i) {
      std::byte* e = used_ + used_entry_off(at & mask_);
      store_used_elem(e, pending_[i].id, pending_[i].len);
      at = static_cast<uint16_t>(at + nheads_[i]);
    }
    stats_.used_elems += npending_;
    shadow_used_ = at;
    npending_ = 0;
  }
  if (pending_bufs_ == 0) return false;
  notify_old_ = used_idx_;
  used_idx_ = shadow_used_;
  pending_bufs_ = 0;
  ++stats_.flushes;
  // Release: the elements written above are visible before the new index.
  store_release<uint16_t>(used_ + kUsedIdxOff, used_idx_);
  if (!cfg_.in_order && cache_demote()) demote_used(notify_old_, used_idx_);
  return true;
}

// The lines the elements of used entries [from, to) were written to, except
// the line entry `to` starts in (the next publish writes it again: getting
// it back from the shared cache cost more than the driver's read saved),
// then the index's line, which the driver polls.
void SplitQueue::demote_used(uint16_t from, uint16_t to) const noexcept {
  const uint16_t n = static_cast<uint16_t>(to - from);
  const uint16_t first = from & mask_;
  const uint16_t run = std::min<uint16_t>(n, static_cast<uint16_t>(size_ - first));
  const auto addr = [&](uint16_t i) { return reinterpret_cast<uintptr_t>(used_ + used_entry_off(i)); };
  const uintptr_t stop_line = addr(to & mask_) & ~uintptr_t{63};  // not demoted
  auto lines = [&](uint16_t at, uint16_t count) {
    const uintptr_t end = addr(at) + size_t{count} * sizeof(UsedElem);
    for (uintptr_t a = addr(at) & ~uintptr_t{63}; a < end; a += 64)
      if (a != stop_line) demote_line(reinterpret_cast<const std::byte*>(a));
  };
  lines(first, run);
  if (run < n) lines(0, static_cast<uint16_t>(n - run));
  demote_line(used_ + kUsedIdxOff);
}

bool SplitQueue::notify_needed() noexcept {
  if (!running()) return false;
  if (cfg_.event_idx) {
    uint16_t event = load_relaxed<uint16_t>(avail_ + avail_entry_off(size_));
    return need_event(event, used_idx_, notify_old_);
  }
  return (load_relaxed<uint16_t>(avail_) & kAvailFNoInterrupt) == 0;
}

bool SplitQueue::flush() noexcept {
  if (!publish()) return false;
  // Full fence: our used->idx store must be ordered before we read the
  // driver's used_event/flags, or both sides can miss each other (2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return notify_needed();
}

void SplitQueue::set_kick_notification(bool enable) noexcept {
  if (!running()) return;
  if (cfg_.event_idx) {
    // avail_event: kick me once the avail index passes last_avail.
    if (enable) store_relaxed<uint16_t>(used_ + used_entry_off(size_), last_avail_);
  } else {
    store_relaxed<uint16_t>(used_, enable ? 0 : kUsedFNoNotify);
  }
  // Order the store above before the caller's re-check of the avail index.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

bool SplitQueue::has_available() noexcept {
  if (!running() || broken()) return false;
  if (last_avail_ != shadow_avail_) return true;
  shadow_avail_ = load_acquire<uint16_t>(avail_ + kAvailIdxOff);
  uint16_t ahead = static_cast<uint16_t>(shadow_avail_ - last_avail_);
  if (ahead > size_) {
    (void)fail(Errc::kAvailIndexTooFar);
    return false;
  }
  return ahead != 0;
}

Result<bool> SplitQueue::pop_head(uint16_t head, Chain& c) {
  if (broken()) return broken_;
  if (!running()) return Errc::kQueueNotReady;
  if (head >= size_) return fail(Errc::kHeadOutOfRange);
  if (Status w = walk_chain(head, c); !w.ok()) return w.error();  // walk_chain broke the queue
  ++stats_.popped;
  return true;
}

bool SplitQueue::chain_poisoned(const Chain& c) const noexcept {
  if (poison_ == nullptr) return false;
  for (const iovec& v : c.all())
    if (poison_->touches(v.iov_base, v.iov_len)) return true;
  return false;
}

SplitQueue::FaultHit SplitQueue::take_faults() noexcept {
  fault::Fault fs[fault::ThreadFaults::kRecent];
  const size_t n = fault::take(fs);
  FaultHit worst = FaultHit::kNone;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, note_fault(fs[i]));
  return worst;
}

void SplitQueue::drop_memory() noexcept {
  desc_ = avail_ = used_ = nullptr;
  std::fill(std::begin(areas_), std::end(areas_), nullptr);
  mem_.reset();
  memp_ = nullptr;
  poison_ = nullptr;
}

void SplitQueue::halt() noexcept {
  // Not running from now on: push(), publish() and the notification calls
  // do nothing, so a broken ring is never written again. The memory table
  // stays (a fault found later is still placed in it).
  desc_ = avail_ = used_ = nullptr;
  npending_ = 0;
  pending_bufs_ = 0;
}

SplitQueue::FaultHit SplitQueue::note_fault(const fault::Fault& f) noexcept {
  auto gpa = memp_ != nullptr ? memp_->note_fault(f) : Result<uint64_t>(Errc::kAddressNotMapped);
  const auto in = [&](const std::byte* base, size_t len) {
    return base != nullptr && f.addr - reinterpret_cast<uintptr_t>(base) < len;
  };
  // The areas as attached: a queue halted by a ring error still knows them.
  if (!in(areas_[0], desc_table_bytes(size_)) && !in(areas_[1], avail_ring_bytes(size_)) &&
      !in(areas_[2], used_ring_bytes(size_)))
    return gpa.ok() ? FaultHit::kBuffer : FaultHit::kOutside;
  if (broken_.code != Errc::kGuestMemoryFault) {
    fault_gpa_ = gpa.ok() ? gpa.value() : 0;
    fault_cause_ = f.cause;
    broken_ = Error(Errc::kGuestMemoryFault);  // the true reason, whatever was seen first
    halt();
    const std::string_view why = fault::cause_name(f.cause);
    LOG_WARN("virtq", "queue broken: guest-memory-fault at gpa 0x%llx (%.*s)",
             static_cast<unsigned long long>(fault_gpa_), static_cast<int>(why.size()), why.data());
  }
  return FaultHit::kRing;
}

template int SplitQueue::pop_impl<true>(Chain&);
template int SplitQueue::pop_impl<false>(Chain&);

}  // namespace sluice::virtq
