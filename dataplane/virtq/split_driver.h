// Driver side of a split virtqueue (virtio 1.2, section 2.7): adds buffers,
// publishes them, and collects used buffers while checking that the device
// follows the spec (ids name outstanding buffers; in-order batches cover
// buffers in the order they were made available). Used by the mock driver in
// tests and benchmarks, and by the virtio-pci driver over VFIO.
//
// The device is not trusted: every used id and index it writes is checked.
// Driver bookkeeping (free list, chain lengths, order) lives in private memory
// the device cannot reach.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/ring.h"

namespace sluice::virtq {

struct DriverConfig {
  uint16_t size = 0;
  uint64_t desc_addr = 0;
  uint64_t avail_addr = 0;
  uint64_t used_addr = 0;
  // Guest area for indirect tables: size * kMaxIndirectPerHead descriptors.
  uint64_t indirect_addr = 0;
  bool event_idx = false;
  bool indirect = false;
  bool in_order = false;
};

// One guest buffer to add.
struct DriverBuf {
  uint64_t addr;
  uint32_t len;
  bool writable;
};

// A buffer the device has returned.
struct UsedBuf {
  uint16_t head;
  uint32_t len;       // the length the device reported (in-order: see below)
  bool batch_skipped; // in-order: covered by a later element; len is the full writable length
  uint64_t token;
};

// Cache-line aligned for the same reason as SplitQueue: its cursors are
// written per buffer by the driver's thread.
class alignas(64) SplitDriver {
 public:
  static constexpr uint32_t kMaxIndirectPerHead = 64;

  // Maps the rings through mem (they must be contiguous) and zeroes them.
  Status init(const DriverConfig& cfg, const MemoryTable& mem);

  // Makes a chain of bufs (readable ones first) available, as an indirect
  // table when `indirect` is set. Not visible to the device until publish().
  Result<uint16_t> add(std::span<const DriverBuf> bufs, bool indirect, uint64_t token = 0);
  // Publishes added chains (one release store of avail->idx); returns true when
  // the device asked to be kicked (2.7.10).
  bool publish();
  // Takes the next used buffer. False when none; an error when the device
  // broke the spec (the ring is then unusable).
  Result<bool> get_used(UsedBuf& out);
  // Interrupt suppression (2.7.7): used_event or the NO_INTERRUPT flag.
  void set_interrupts(bool enable);

  uint16_t free_descs() const noexcept { return num_free_; }
  uint16_t outstanding() const noexcept { return outstanding_; }
  uint16_t avail_idx() const noexcept { return avail_idx_; }
  uint16_t size() const noexcept { return cfg_.size; }
  std::byte* desc_table() const noexcept { return desc_; }
  std::byte* avail_area() const noexcept { return avail_; }
  std::byte* used_area() const noexcept { return used_; }

 private:
  void free_chain(uint16_t head);

  DriverConfig cfg_{};
  uint16_t mask_ = 0;
  std::byte* desc_ = nullptr;
  std::byte* avail_ = nullptr;
  std::byte* used_ = nullptr;
  std::byte* indirect_ = nullptr;

  uint16_t avail_idx_ = 0;      // next avail index to publish
  uint16_t published_avail_ = 0;
  uint16_t last_used_ = 0;      // next used slot to read
  uint16_t num_free_ = 0;
  uint16_t outstanding_ = 0;
  uint16_t free_head_ = 0;      // not in-order: head of the private free list
  uint16_t next_desc_ = 0;      // in-order: next table slot to fill
  std::vector<uint16_t> next_free_;   // private free-list links
  std::vector<uint16_t> chain_len_;   // table descriptors per outstanding head
  std::vector<uint8_t> live_;         // head outstanding?
  std::vector<uint64_t> token_;
  std::vector<uint32_t> write_len_;   // writable bytes per head
  // Outstanding heads in the order they were made available (for in-order).
  std::vector<uint16_t> order_;
  uint16_t order_head_ = 0, order_tail_ = 0;
  // In-order: the id ending the batch being consumed, and its element's len.
  bool in_batch_ = false;
  uint16_t batch_last_ = 0;
  uint32_t batch_len_ = 0;
};

}  // namespace sluice::virtq
