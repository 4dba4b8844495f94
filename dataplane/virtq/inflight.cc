#include "dataplane/virtq/inflight.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "dataplane/base/log.h"

namespace sluice::virtq {

std::vector<uint16_t> InflightTracker::recover(SplitQueue& q) {
  std::vector<uint16_t> heads;
  if (!active()) return heads;
  InflightHeader* h = hdr();
  uint16_t ring_used = q.ring_used_idx();
  if (h->version != 1 || h->desc_num != size_) {
    // A fresh region (all zero), or one for another queue size: start clean.
    if (h->version != 0 || h->desc_num != 0)
      LOG_WARN("inflight", "region does not describe this queue (version %u, %u descriptors); reset",
               h->version, h->desc_num);
    std::memset(base_, 0, inflight_queue_bytes(size_));
    h->version = 1;
    h->desc_num = size_;
    h->used_idx = ring_used;
    counter_ = 1;
    q.set_indices(ring_used, ring_used);
    return heads;
  }
  // The back-end died after publishing completions but before clearing their
  // flags: the used ring says which ones (at most a queue's worth).
  uint16_t gap = static_cast<uint16_t>(ring_used - h->used_idx);
  if (gap != 0 && gap <= size_) {
    for (uint16_t i = 0; i < gap; ++i) {
      uint32_t id = q.ring_used_id(static_cast<uint16_t>(h->used_idx + i));
      if (id < size_) desc(static_cast<uint16_t>(id))->inflight = 0;
    }
  }
  h->used_idx = ring_used;
  // The region is the front-end's memory and may change under us: each
  // descriptor's flag and counter are read once, into our own copy, and only
  // the copy is sorted (a comparator reading shared memory could see two
  // orders of the same pair and send std::sort out of bounds).
  struct InFlight {
    uint64_t counter;
    uint16_t head;
  };
  std::vector<InFlight> found;
  uint64_t max_counter = 0;
  for (uint16_t i = 0; i < size_; ++i) {
    InflightDesc* d = desc(i);
    const uint8_t flag = std::atomic_ref<uint8_t>(d->inflight).load(std::memory_order_acquire);
    if (flag == 1) {
      const uint64_t c = std::atomic_ref<uint64_t>(d->counter).load(std::memory_order_relaxed);
      found.push_back({c, i});
      max_counter = std::max(max_counter, c);
    } else {
      d->inflight = 0;  // anything else is not a state we wrote
    }
  }
  std::sort(found.begin(), found.end(), [](const InFlight& a, const InFlight& b) {
    return a.counter != b.counter ? a.counter < b.counter : a.head < b.head;
  });
  for (const InFlight& f : found) heads.push_back(f.head);
  counter_ = max_counter + 1;
  // The front-end restored last_avail to the used index; the in-flight
  // requests come from the entries right after it.
  q.set_indices(static_cast<uint16_t>(ring_used + heads.size()), ring_used);
  if (!heads.empty())
    LOG_INFO("inflight", "resubmitting %zu request(s) left in flight by the previous back-end",
             heads.size());
  return heads;
}

void InflightTracker::begin(uint16_t head) noexcept {
  if (!active()) return;
  InflightDesc* d = desc(head);
  d->counter = counter_++;
  // Release: the counter is written before the flag says it is valid.
  std::atomic_ref<uint8_t>(d->inflight).store(1, std::memory_order_release);
}

void InflightTracker::pre_put(uint16_t head) noexcept {
  if (active()) hdr()->last_batch_head = head;
}

void InflightTracker::end(uint16_t head) noexcept {
  if (active()) std::atomic_ref<uint8_t>(desc(head)->inflight).store(0, std::memory_order_release);
}

void InflightTracker::set_used_idx(uint16_t idx) noexcept {
  if (active()) std::atomic_ref<uint16_t>(hdr()->used_idx).store(idx, std::memory_order_release);
}

}  // namespace sluice::virtq
