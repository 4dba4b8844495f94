#include "dataplane/virtq/split_driver.h"

#include <atomic>
#include <cstring>

namespace sluice::virtq {

Status SplitDriver::init(const DriverConfig& cfg, const MemoryTable& mem) {
  if (cfg.size == 0 || cfg.size > kMaxQueueSize || (cfg.size & (cfg.size - 1)) != 0)
    return Errc::kQueueBadSize;
  if (cfg.desc_addr % 16 != 0 || cfg.avail_addr % 2 != 0 || cfg.used_addr % 4 != 0)
    return Errc::kQueueMisaligned;
  auto d = mem.translate_exact(cfg.desc_addr, desc_table_bytes(cfg.size));
  auto a = mem.translate_exact(cfg.avail_addr, avail_ring_bytes(cfg.size));
  auto u = mem.translate_exact(cfg.used_addr, used_ring_bytes(cfg.size));
  if (!d.ok() || !a.ok() || !u.ok()) return Errc::kQueueRingNotContiguous;
  indirect_ = nullptr;
  if (cfg.indirect) {
    auto t = mem.translate_exact(cfg.indirect_addr,
                                 uint64_t{cfg.size} * kMaxIndirectPerHead * sizeof(Desc));
    if (!t.ok()) return Errc::kQueueRingNotContiguous;
    indirect_ = t.value();
  }
  cfg_ = cfg;
  mask_ = static_cast<uint16_t>(cfg.size - 1);
  desc_ = d.value();
  avail_ = a.value();
  used_ = u.value();
  std::memset(desc_, 0, desc_table_bytes(cfg.size));
  std::memset(avail_, 0, avail_ring_bytes(cfg.size));
  std::memset(used_, 0, used_ring_bytes(cfg.size));
  avail_idx_ = published_avail_ = last_used_ = 0;
  num_free_ = cfg.size;
  outstanding_ = 0;
  free_head_ = 0;
  next_desc_ = 0;
  next_free_.assign(cfg.size, 0);
  for (uint32_t i = 0; i < cfg.size; ++i) next_free_[i] = static_cast<uint16_t>((i + 1) & mask_);
  chain_len_.assign(cfg.size, 0);
  live_.assign(cfg.size, 0);
  token_.assign(cfg.size, 0);
  write_len_.assign(cfg.size, 0);
  order_.assign(cfg.size, 0);
  order_head_ = order_tail_ = 0;
  in_batch_ = false;
  return {};
}

Result<uint16_t> SplitDriver::add(std::span<const DriverBuf> bufs, bool indirect,
                                  uint64_t token) {
  if (bufs.empty() || bufs.size() > cfg_.size) return Errc::kInvalidArgument;
  if (indirect && (!cfg_.indirect || bufs.size() > kMaxIndirectPerHead))
    return Errc::kInvalidArgument;
  uint16_t need = indirect ? 1 : static_cast<uint16_t>(bufs.size());
  if (num_free_ < need) return Errc::kQueueFull;

  uint16_t head = cfg_.in_order ? next_desc_ : free_head_;
  uint32_t wlen = 0;
  auto make = [&](size_t i, uint16_t next, bool last) {
    Desc x{bufs[i].addr, bufs[i].len, 0, 0};
    if (bufs[i].writable) {
      x.flags |= kDescFWrite;
      wlen += bufs[i].len;
    }
    if (!last) {
      x.flags |= kDescFNext;
      x.next = next;
    }
    return x;
  };
  if (indirect) {
    std::byte* table = indirect_ + size_t{head} * kMaxIndirectPerHead * sizeof(Desc);
    for (size_t i = 0; i < bufs.size(); ++i) {
      Desc x = make(i, static_cast<uint16_t>(i + 1), i + 1 == bufs.size());
      std::memcpy(table + i * sizeof(Desc), &x, sizeof x);
    }
    uint64_t table_gpa = cfg_.indirect_addr + uint64_t{head} * kMaxIndirectPerHead * sizeof(Desc);
    Desc h{table_gpa, static_cast<uint32_t>(bufs.size() * sizeof(Desc)), kDescFIndirect, 0};
    std::memcpy(desc_ + size_t{head} * sizeof(Desc), &h, sizeof h);
    if (!cfg_.in_order) free_head_ = next_free_[head];
  } else {
    uint16_t idx = head;
    for (size_t i = 0; i < bufs.size(); ++i) {
      // In-order: ring order, wrapping to 0 after the last table entry (2.7.5).
      uint16_t next = cfg_.in_order ? static_cast<uint16_t>((idx + 1) & mask_) : next_free_[idx];
      Desc x = make(i, next, i + 1 == bufs.size());
      std::memcpy(desc_ + size_t{idx} * sizeof(Desc), &x, sizeof x);
      idx = next;
    }
    if (!cfg_.in_order) free_head_ = idx;
  }
  if (cfg_.in_order) {
    next_desc_ = static_cast<uint16_t>((next_desc_ + need) & mask_);
    order_[order_tail_++ & mask_] = head;
  }
  num_free_ = static_cast<uint16_t>(num_free_ - need);
  ++outstanding_;
  chain_len_[head] = need;
  live_[head] = 1;
  token_[head] = token;
  write_len_[head] = wlen;
  store_relaxed<uint16_t>(avail_ + avail_entry_off(avail_idx_ & mask_), head);
  ++avail_idx_;
  return head;
}

bool SplitDriver::publish() {
  uint16_t old = published_avail_;
  published_avail_ = avail_idx_;
  // Release: descriptors and ring entries are visible before the index.
  store_release<uint16_t>(avail_ + kAvailIdxOff, avail_idx_);
  // Full fence before reading the device's suppression state (2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (cfg_.event_idx) {
    uint16_t event = load_relaxed<uint16_t>(used_ + used_entry_off(cfg_.size));
    return need_event(event, avail_idx_, old);
  }
  return (load_relaxed<uint16_t>(used_) & kUsedFNoNotify) == 0;
}

void SplitDriver::free_chain(uint16_t head) {
  uint16_t n = chain_len_[head];
  live_[head] = 0;
  --outstanding_;
  num_free_ = static_cast<uint16_t>(num_free_ + n);
  if (cfg_.in_order) return;  // in-order reuses the table in ring order
  uint16_t last = head;
  for (uint16_t i = 1; i < n; ++i) last = next_free_[last];
  next_free_[last] = free_head_;
  free_head_ = head;
}

Result<bool> SplitDriver::get_used(UsedBuf& out) {
  if (!cfg_.in_order || !in_batch_) {
    uint16_t used_idx = load_acquire<uint16_t>(used_ + kUsedIdxOff);
    uint16_t ready = static_cast<uint16_t>(used_idx - last_used_);
    if (ready == 0) return false;
    if (ready > outstanding_) return Errc::kUsedIndexTooFar;
    const std::byte* e = used_ + used_entry_off(last_used_ & mask_);
    uint32_t id = load_relaxed<uint32_t>(e);
    uint32_t len = load_relaxed<uint32_t>(e + 4);
    if (id >= cfg_.size || !live_[id]) return Errc::kUsedIdOutOfRange;
    if (!cfg_.in_order) {
      out = UsedBuf{static_cast<uint16_t>(id), len, false, token_[id]};
      ++last_used_;
      free_chain(static_cast<uint16_t>(id));
      return true;
    }
    // In-order (2.7.9): the element names the last buffer of a batch, which
    // must be one of the next `ready` buffers in the order they were added.
    bool found = false;
    for (uint16_t k = 0; k < ready; ++k)
      if (order_[(order_head_ + k) & mask_] == id) {
        found = true;
        break;
      }
    if (!found) return Errc::kUsedOutOfOrder;
    in_batch_ = true;
    batch_last_ = static_cast<uint16_t>(id);
    batch_len_ = len;
  }
  uint16_t head = order_[order_head_++ & mask_];
  bool last = head == batch_last_;
  out = UsedBuf{head, last ? batch_len_ : write_len_[head], !last, token_[head]};
  if (last) in_batch_ = false;
  ++last_used_;
  free_chain(head);
  return true;
}

void SplitDriver::set_interrupts(bool enable) {
  if (cfg_.event_idx) {
    if (enable) store_relaxed<uint16_t>(avail_ + avail_entry_off(cfg_.size), last_used_);
  } else {
    store_relaxed<uint16_t>(avail_, enable ? 0 : kAvailFNoInterrupt);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace sluice::virtq
