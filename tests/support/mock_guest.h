// Test seam (STYLE.md rule 14): guest memory made of memfds, a bump allocator
// of guest addresses, and a mock driver that puts rings in it and drives them
// through the driver side of the ring. Shared by unit tests, fuzzers and
// benchmarks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/split_driver.h"
#include "dataplane/virtq/split_queue.h"

namespace sluice::test {

struct MockRegion {
  uint64_t gpa;
  uint64_t size;
};

// Makes a memfd of `size` bytes (aborts on failure: test support only).
UniqueFd make_memfd(uint64_t size);

class MockGuest {
 public:
  explicit MockGuest(std::vector<MockRegion> regions = {{0x100000, 16u << 20}});

  GuestMemory& memory() { return mem_; }
  std::shared_ptr<const MemoryTable> table() const { return mem_.snapshot(); }
  // Guest address of a fresh, zeroed block that does not cross a region edge.
  uint64_t alloc(uint64_t size, uint64_t align = 64);
  // Host pointer for a guest address that the test knows to be mapped.
  std::byte* host(uint64_t gpa) const;
  void write(uint64_t gpa, std::span<const std::byte> data) const;
  void fill(uint64_t gpa, uint64_t len, uint8_t value) const;

 private:
  GuestMemory mem_;
  std::vector<MockRegion> regions_;
  std::vector<uint64_t> cursor_;  // next free byte per region
};

struct QueueLayout {
  uint16_t size = 256;
  bool event_idx = false;
  bool indirect = true;
  bool in_order = false;
  virtq::InOrderBatching batching = virtq::InOrderBatching::kBatch;
};

class MockDriver {
 public:
  MockDriver(MockGuest& guest, QueueLayout layout);

  // What the front-end would hand the device (SET_VRING_NUM/ADDR + features).
  virtq::QueueConfig device_config() const;
  virtq::SplitDriver& ring() { return ring_; }
  // Zeroes the rings and starts the driver side over (fuzzers reuse drivers).
  void reset();
  MockGuest& guest() { return guest_; }
  const QueueLayout& layout() const { return layout_; }

  // Adds a chain of buffers taken from the driver's arena: readable ones with the given
  // lengths (filled with `pattern`), then writable ones. Returns the head.
  uint16_t add_chain(std::span<const uint32_t> read_lens, std::span<const uint32_t> write_lens,
                     bool indirect = false, uint8_t pattern = 0xab, uint64_t token = 0);

  // Raw access for hostile-input tests: bypasses every driver-side rule.
  void poke_desc(uint16_t idx, const virtq::Desc& d);
  void poke_avail_entry(uint16_t slot, uint16_t head);
  void poke_avail_idx(uint16_t idx);
  uint16_t peek_used_idx() const;
  virtq::UsedElem peek_used_elem(uint16_t slot) const;
  uint16_t peek_avail_event() const;
  uint16_t peek_used_flags() const;
  uint64_t desc_addr() const { return desc_; }

 private:
  MockGuest& guest_;
  QueueLayout layout_;
  // Buffers come from a cyclic arena: long runs never exhaust the guest.
  uint64_t take(uint32_t len);
  static constexpr uint64_t kArena = 1u << 20;
  uint64_t desc_ = 0, avail_ = 0, used_ = 0, indirect_ = 0;
  uint64_t arena_ = 0, arena_pos_ = 0;
  virtq::DriverConfig config_{};
  virtq::SplitDriver ring_;
};

}  // namespace sluice::test
