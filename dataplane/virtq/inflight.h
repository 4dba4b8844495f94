// Inflight I/O tracking for split rings (QEMU docs/interop/vhost-user.rst,
// "Inflight I/O tracking"): a region of shared memory that survives the
// back-end. The front-end keeps its fd and hands it to the next back-end
// instance, which resubmits what was popped but never completed. That is how
// a back-end can be killed and restarted under a running guest with no I/O
// lost.
//
// The region is shared with the front-end, so it is hostile input when read
// back: heads and sizes are checked, and a region that does not describe this
// queue is reset rather than trusted.
#pragma once

#include <cstdint>
#include <vector>

#include "dataplane/virtq/split_queue.h"

namespace sluice::virtq {

// struct DescStateSplit.
struct InflightDesc {
  uint8_t inflight;
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;
};
static_assert(sizeof(InflightDesc) == 16);

// struct QueueRegionSplit, followed by desc_num InflightDesc.
struct InflightHeader {
  uint64_t features;
  uint16_t version;
  uint16_t desc_num;
  uint16_t last_batch_head;
  uint16_t used_idx;
};
static_assert(sizeof(InflightHeader) == 16);

inline constexpr uint64_t kInflightAlign = 64;
inline constexpr uint64_t inflight_queue_bytes(uint32_t queue_size) {
  uint64_t n = sizeof(InflightHeader) + uint64_t{queue_size} * sizeof(InflightDesc);
  return (n + kInflightAlign - 1) / kInflightAlign * kInflightAlign;
}

// One queue's region. Not thread-safe: used by the worker that owns the queue.
class InflightTracker {
 public:
  InflightTracker() = default;
  InflightTracker(std::byte* region, uint16_t queue_size) : base_(region), size_(queue_size) {}
  bool active() const noexcept { return base_ != nullptr; }

  // Brings the region in line with the used ring after a (re)start and
  // returns the heads to resubmit, oldest first. The queue's indices are set
  // so that new requests are popped after the resubmitted ones.
  std::vector<uint16_t> recover(SplitQueue& q);

  void begin(uint16_t head) noexcept;     // popped
  void pre_put(uint16_t head) noexcept;   // completion about to be pushed
  void end(uint16_t head) noexcept;       // completion published
  void set_used_idx(uint16_t idx) noexcept;

 private:
  InflightHeader* hdr() const noexcept { return reinterpret_cast<InflightHeader*>(base_); }
  InflightDesc* desc(uint16_t i) const noexcept {
    return reinterpret_cast<InflightDesc*>(base_ + sizeof(InflightHeader)) + i;
  }

  std::byte* base_ = nullptr;
  uint16_t size_ = 0;
  uint64_t counter_ = 1;
};

}  // namespace sluice::virtq
