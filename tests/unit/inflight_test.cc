// Inflight I/O tracking: what a restarted back-end resubmits, and how it
// repairs a region left mid-update.
#include <atomic>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "dataplane/virtq/inflight.h"
#include "tests/support/mock_guest.h"

namespace sluice::virtq {
namespace {

struct Rig {
  test::MockGuest g;
  test::MockDriver d{g, test::QueueLayout{.size = 16}};
  std::vector<std::byte> region = std::vector<std::byte>(inflight_queue_bytes(16));
  SplitQueue q;
  InflightTracker t;
  Chain c;
  Rig() { start(0); }
  // A back-end instance starting on the ring at `base`.
  void start(uint16_t base) {
    q.reset();
    EXPECT_TRUE(q.configure(d.device_config()).ok());
    EXPECT_TRUE(q.attach(g.table()).ok());
    q.set_base(base);
    t = InflightTracker(region.data(), 16);
  }
  uint16_t pop() {
    auto r = q.pop(c);
    EXPECT_TRUE(r.ok() && r.value());
    t.begin(c.head());
    return c.head();
  }
  void complete(uint16_t head, bool finish_bookkeeping = true) {
    t.pre_put(head);
    q.push(head, 1);
    q.flush();
    if (finish_bookkeeping) {
      t.end(head);
      t.set_used_idx(q.used_idx());
    }
  }
};

const uint32_t kWr[] = {16};

TEST(Inflight, FreshRegionIsInitialised) {
  Rig r;
  EXPECT_TRUE(r.t.recover(r.q).empty());
  auto* h = reinterpret_cast<InflightHeader*>(r.region.data());
  EXPECT_EQ(h->version, 1);
  EXPECT_EQ(h->desc_num, 16);
}

TEST(Inflight, RestartResubmitsWhatWasInFlightOldestFirst) {
  Rig r;
  (void)r.t.recover(r.q);
  for (int i = 0; i < 4; ++i) r.d.add_chain({}, kWr);
  r.d.ring().publish();
  uint16_t a = r.pop(), b = r.pop(), c = r.pop();
  r.complete(b);
  // kill -9 here: a and c were popped, never completed; the 4th not popped.
  // The front-end restores last_avail to the used index (1) for the new one.
  r.start(r.q.ring_used_idx());
  auto heads = r.t.recover(r.q);
  EXPECT_EQ(heads, (std::vector<uint16_t>{a, c}));
  EXPECT_EQ(r.q.last_avail_idx(), 3);  // new requests come after the resubmitted ones
  for (uint16_t h : heads) {
    ASSERT_TRUE(r.q.pop_head(h, r.c).value());
    r.complete(h);
  }
  uint16_t d = r.pop();  // the 4th request, exactly once
  r.complete(d);
  virtq::UsedBuf u{};
  std::vector<uint16_t> seen;
  while (r.d.ring().get_used(u).value()) seen.push_back(u.head);
  EXPECT_EQ(seen.size(), 4u);  // every request answered once
}

TEST(Inflight, CrashAfterPublishingBeforeClearingIsRepaired) {
  Rig r;
  (void)r.t.recover(r.q);
  for (int i = 0; i < 2; ++i) r.d.add_chain({}, kWr);
  r.d.ring().publish();
  uint16_t a = r.pop(), b = r.pop();
  r.complete(a, /*finish_bookkeeping=*/false);  // used idx published, flag still set
  r.start(r.q.ring_used_idx());
  auto heads = r.t.recover(r.q);
  EXPECT_EQ(heads, std::vector<uint16_t>{b});  // a is done: not redone
  auto* h = reinterpret_cast<InflightHeader*>(r.region.data());
  EXPECT_EQ(h->used_idx, 1);
}

TEST(Inflight, RegionForAnotherQueueSizeIsReset) {
  Rig r;
  auto* h = reinterpret_cast<InflightHeader*>(r.region.data());
  h->version = 1;
  h->desc_num = 64;  // not this queue
  auto* d = reinterpret_cast<InflightDesc*>(r.region.data() + sizeof(InflightHeader));
  d[3].inflight = 1;
  EXPECT_TRUE(r.t.recover(r.q).empty());
  EXPECT_EQ(h->desc_num, 16);
  EXPECT_EQ(d[3].inflight, 0);
}

TEST(Inflight, GarbageFlagsAreNotResubmitted) {
  Rig r;
  (void)r.t.recover(r.q);
  auto* d = reinterpret_cast<InflightDesc*>(r.region.data() + sizeof(InflightHeader));
  d[5].inflight = 7;  // not a value we write
  r.start(0);
  EXPECT_TRUE(r.t.recover(r.q).empty());
  EXPECT_EQ(d[5].inflight, 0);
}

// The region is the front-end's: it may rewrite flags and counters while we
// recover. Recovery reads each descriptor once into its own copy and sorts
// that (sorting by counters read from shared memory can see a pair in two
// orders and run std::sort out of bounds). Whatever the front-end writes,
// the answer is a set of distinct heads inside the queue.
TEST(Inflight, RegionRewrittenDuringRecoveryGivesValidHeads) {
  Rig r;
  (void)r.t.recover(r.q);
  std::atomic<bool> stop{false};
  std::thread scribbler([&] {
    std::mt19937_64 rng(7);
    auto* d = reinterpret_cast<InflightDesc*>(r.region.data() + sizeof(InflightHeader));
    while (!stop.load(std::memory_order_relaxed))
      for (int i = 0; i < 16; ++i) {
        std::atomic_ref<uint64_t>(d[i].counter).store(rng(), std::memory_order_relaxed);
        std::atomic_ref<uint8_t>(d[i].inflight).store(static_cast<uint8_t>(rng() % 3), std::memory_order_relaxed);
      }
  });
  for (int round = 0; round < 2000; ++round) {
    r.q.reset();
    ASSERT_TRUE(r.q.configure(r.d.device_config()).ok());
    ASSERT_TRUE(r.q.attach(r.g.table()).ok());
    r.q.set_base(0);
    r.t = InflightTracker(r.region.data(), 16);
    auto heads = r.t.recover(r.q);
    std::set<uint16_t> seen(heads.begin(), heads.end());
    ASSERT_EQ(seen.size(), heads.size());
    for (uint16_t h : heads) ASSERT_LT(h, 16);
  }
  stop.store(true);
  scribbler.join();
}

}  // namespace
}  // namespace sluice::virtq
