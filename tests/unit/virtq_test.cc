// Split virtqueue, device side: chains, hostile input (one test per named
// error), EVENT_IDX, and 16-bit index wrap-around.
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

namespace sluice::virtq {
namespace {

using test::MockDriver;
using test::MockGuest;
using test::QueueLayout;

struct Rig {
  MockGuest guest;
  MockDriver drv;
  SplitQueue q;
  Chain c;
  explicit Rig(QueueLayout l = {}, std::vector<test::MockRegion> regions = {{0x100000, 16u << 20}})
      : guest(std::move(regions)), drv(guest, l) {
    EXPECT_TRUE(q.configure(drv.device_config()).ok());
    EXPECT_TRUE(q.attach(guest.table()).ok());
    q.set_base(0);
  }
  // Pops expecting a guest fault; checks it is sticky.
  void expect_fault(Errc e) {
    auto r = q.pop(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error(), e) << r.error().name();
    EXPECT_TRUE(q.broken());
    EXPECT_EQ(q.broken_reason(), e);
    auto again = q.pop(c);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.error(), e);
  }
};

const uint32_t k64[] = {64};
const uint32_t k128[] = {128};

TEST(SplitQueue, PopsDirectChainAndPushesUsed) {
  Rig r;
  const uint32_t rd[] = {16, 32};
  const uint32_t wr[] = {100};
  uint16_t head = r.drv.add_chain(rd, wr, false, 0x5a, 42);
  r.drv.ring().publish();
  auto got = r.q.pop(r.c);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got.value());
  EXPECT_EQ(r.c.head(), head);
  EXPECT_EQ(r.c.table_descs(), 3);
  ASSERT_EQ(r.c.readable().size(), 2u);
  ASSERT_EQ(r.c.writable().size(), 1u);
  EXPECT_EQ(r.c.readable_bytes(), 48u);
  EXPECT_EQ(r.c.writable_bytes(), 100u);
  EXPECT_EQ(static_cast<uint8_t*>(r.c.readable()[1].iov_base)[31], 0x5a);  // zero copy view
  std::memset(r.c.writable()[0].iov_base, 0x77, 100);
  r.q.push(r.c.head(), 100);
  EXPECT_EQ(r.drv.peek_used_idx(), 0);  // nothing visible before flush
  EXPECT_TRUE(r.q.flush());
  UsedBuf u{};
  ASSERT_TRUE(r.drv.ring().get_used(u).value());
  EXPECT_EQ(u.head, head);
  EXPECT_EQ(u.len, 100u);
  EXPECT_EQ(u.token, 42u);
  EXPECT_FALSE(r.q.pop(r.c).value());  // empty
}

TEST(SplitQueue, PopsIndirectChain) {
  Rig r;
  const uint32_t rd[] = {8, 8, 8};
  const uint32_t wr[] = {1, 2};
  r.drv.add_chain(rd, wr, true);
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.table_descs(), 1);  // one table slot for the whole chain
  EXPECT_EQ(r.c.readable().size(), 3u);
  EXPECT_EQ(r.c.writable().size(), 2u);
  EXPECT_EQ(r.c.writable_bytes(), 3u);
}

TEST(SplitQueue, BufferAcrossRegionEdgeBecomesTwoSegments) {
  Rig r({}, {{0x100000, 1u << 20}, {0x200000, 1u << 20}});
  r.drv.ring().add(std::vector<DriverBuf>{{0x1ff000, 0x2000, false}}, false).value();
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  ASSERT_EQ(r.c.readable().size(), 2u);
  EXPECT_EQ(r.c.readable()[0].iov_len, 0x1000u);
  EXPECT_EQ(r.c.readable()[1].iov_len, 0x1000u);
}

TEST(SplitQueue, ZeroLengthDescriptorIsSkipped) {
  Rig r;
  const uint32_t rd[] = {0, 4};
  r.drv.add_chain(rd, {});
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.readable().size(), 1u);
}

// --- configuration errors
TEST(SplitQueueConfig, BadSize) {
  SplitQueue q;
  QueueConfig c;
  c.size = 0;
  EXPECT_EQ(q.configure(c).error(), Errc::kQueueBadSize);
  c.size = 100;  // not a power of two
  EXPECT_EQ(q.configure(c).error(), Errc::kQueueBadSize);
}

TEST(SplitQueueConfig, Misaligned) {
  SplitQueue q;
  QueueConfig c;
  c.size = 8;
  c.desc_addr = 0x1008;
  EXPECT_EQ(q.configure(c).error(), Errc::kQueueMisaligned);
  c.desc_addr = 0x1000;
  c.used_addr = 0x2002;
  EXPECT_EQ(q.configure(c).error(), Errc::kQueueMisaligned);
}

TEST(SplitQueueConfig, RingNotContiguous) {
  MockGuest g;
  SplitQueue q;
  QueueConfig c;
  c.size = 256;
  c.desc_addr = 0x100000 + (16u << 20) - 16 * 128;  // table runs off the region's end
  c.avail_addr = 0x100000;
  c.used_addr = 0x101000;
  ASSERT_TRUE(q.configure(c).ok());
  EXPECT_EQ(q.attach(g.table()).error(), Errc::kQueueRingNotContiguous);
}

TEST(SplitQueueConfig, NotReady) {
  SplitQueue q;
  Chain c;
  EXPECT_EQ(q.pop(c).error(), Errc::kQueueNotReady);
  EXPECT_EQ(q.attach(nullptr).error(), Errc::kQueueNotReady);
}

// --- guest faults: one test per named error; each breaks the queue for good.
TEST(SplitQueueFault, AvailIndexTooFar) {
  Rig r;
  r.drv.poke_avail_idx(257);
  r.expect_fault(Errc::kAvailIndexTooFar);
}

TEST(SplitQueueFault, HeadOutOfRange) {
  Rig r;
  r.drv.poke_avail_entry(0, 256);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kHeadOutOfRange);
}

TEST(SplitQueueFault, NextOutOfRange) {
  Rig r;
  uint64_t buf = r.guest.alloc(64);
  r.drv.poke_desc(0, Desc{buf, 64, kDescFNext, 300});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kNextOutOfRange);
}

TEST(SplitQueueFault, ChainLoop) {
  Rig r;
  uint64_t buf = r.guest.alloc(64);
  r.drv.poke_desc(0, Desc{buf, 64, kDescFNext, 1});
  r.drv.poke_desc(1, Desc{buf, 64, kDescFNext, 0});  // 0 -> 1 -> 0 -> ...
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kChainTooLong);
}

TEST(SplitQueueFault, IndirectLoop) {
  Rig r;
  uint64_t table = r.guest.alloc(32, 16);
  uint64_t buf = r.guest.alloc(64);
  Desc t[2] = {{buf, 64, kDescFNext, 1}, {buf, 64, kDescFNext, 0}};
  r.guest.write(table, std::as_bytes(std::span(t)));
  r.drv.poke_desc(0, Desc{table, 32, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kChainTooLong);
}

TEST(SplitQueueFault, IndirectBadLength) {
  for (uint32_t len : {0u, 17u}) {
    Rig r;
    uint64_t table = r.guest.alloc(64, 16);
    r.drv.poke_desc(0, Desc{table, len, kDescFIndirect, 0});
    r.drv.poke_avail_entry(0, 0);
    r.drv.poke_avail_idx(1);
    r.expect_fault(Errc::kIndirectBadLength);
  }
}

TEST(SplitQueueFault, IndirectTooLong) {
  Rig r;
  uint32_t n = SplitQueue::kMaxIndirect + 1;
  uint64_t table = r.guest.alloc(n * 16ull, 16);
  r.drv.poke_desc(0, Desc{table, n * 16, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kIndirectTooLong);
}

TEST(SplitQueueFault, IndirectNested) {
  Rig r;
  uint64_t table = r.guest.alloc(16, 16);
  Desc inner{table, 16, kDescFIndirect, 0};
  r.guest.write(table, std::as_bytes(std::span(&inner, 1)));
  r.drv.poke_desc(0, Desc{table, 16, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kIndirectNested);
}

TEST(SplitQueueFault, IndirectWithNext) {
  Rig r;
  uint64_t table = r.guest.alloc(16, 16);
  r.drv.poke_desc(0, Desc{table, 16, kDescFIndirect | kDescFNext, 1});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kIndirectWithNext);
}

TEST(SplitQueueFault, IndirectNotNegotiated) {
  QueueLayout l;
  l.indirect = false;
  Rig r(l);
  uint64_t table = r.guest.alloc(16, 16);
  r.drv.poke_desc(0, Desc{table, 16, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kIndirectNotNegotiated);
}

TEST(SplitQueueFault, DescAddressOverflow) {
  Rig r;
  r.drv.poke_desc(0, Desc{~0ull - 8, 64, 0, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kDescAddressOverflow);
}

TEST(SplitQueueFault, DescNotMapped) {
  Rig r;
  r.drv.poke_desc(0, Desc{0x100000 + (16u << 20) - 8, 64, 0, 0});  // runs off the end
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kDescNotMapped);
}

TEST(SplitQueueFault, IndirectTableNotMapped) {
  Rig r;
  r.drv.poke_desc(0, Desc{0x40000000, 32, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kDescNotMapped);
}

TEST(SplitQueueFault, ReadableAfterWritable) {
  Rig r;
  uint64_t buf = r.guest.alloc(64);
  r.drv.poke_desc(0, Desc{buf, 8, kDescFWrite | kDescFNext, 1});
  r.drv.poke_desc(1, Desc{buf, 8, 0, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kReadableAfterWritable);
}

TEST(SplitQueueFault, TooManySegments) {
  // 600 descriptors, each crossing the edge between two regions: 1200 segments.
  QueueLayout l;
  l.size = 1024;
  Rig r(l, {{0x100000, 8u << 20}, {0x900000, 8u << 20}});
  for (uint16_t i = 0; i < 600; ++i)
    r.drv.poke_desc(i, Desc{0x8ff000, 0x2000, kDescFNext, static_cast<uint16_t>(i + 1)});
  r.drv.poke_desc(600, Desc{0x8ff000, 0x10, 0, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kChainTooManySegments);
}

TEST(SplitQueueFault, ChainTooLarge) {
  // Two descriptors of 3 GiB each over one 8 MiB region?  Not mappable; use a
  // sparse memfd instead: a 4 GiB + 4 KiB region costs no RAM until touched.
  Rig r({}, {{0x100000, 16u << 20}, {0x100000000ull, (4ull << 30) + 4096}});
  r.drv.poke_desc(0, Desc{0x100000000ull, 0xC0000000u, kDescFNext, 1});
  r.drv.poke_desc(1, Desc{0x100000000ull, 0x80000000u, 0, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kChainTooLarge);
}

TEST(SplitQueueFault, IndirectChainTooLarge) {
  Rig r({}, {{0x100000, 16u << 20}, {0x100000000ull, (4ull << 30) + 4096}});
  const Desc table[2] = {Desc{0x100000000ull, 0xC0000000u, kDescFNext, 1},
                         Desc{0x100000000ull, 0x80000000u, 0, 0}};
  uint64_t t = r.guest.alloc(sizeof table, 16);
  r.guest.write(t, std::as_bytes(std::span(table)));
  r.drv.poke_desc(0, Desc{t, sizeof table, kDescFIndirect, 0});
  r.drv.poke_avail_entry(0, 0);
  r.drv.poke_avail_idx(1);
  r.expect_fault(Errc::kChainTooLarge);
}

TEST(SplitQueueFault, BrokenQueueStaysBrokenUntilReset) {
  Rig r;
  r.drv.poke_avail_idx(1000);
  r.expect_fault(Errc::kAvailIndexTooFar);
  r.drv.poke_avail_idx(0);
  EXPECT_FALSE(r.q.pop(r.c).ok());  // sticky even when the ring looks sane again
  r.q.reset();
  EXPECT_FALSE(r.q.broken());
}

// pop_head (inflight resubmission by head) reports a malformed chain as the
// error it is: it once answered `true`, and a broken queue ran half a chain.
static_assert(!std::is_constructible_v<Result<bool>, int>, "no -1 -> true");
static_assert(!std::is_convertible_v<int, Result<bool>>);
static_assert(!std::is_convertible_v<int, Result<uint64_t>>);
static_assert(std::is_convertible_v<bool, Result<bool>> && std::is_convertible_v<Errc, Result<bool>>);

TEST(SplitQueueFault, PopHeadOfMalformedChainIsAnError) {
  Rig r;
  uint64_t buf = r.guest.alloc(64);
  r.drv.poke_desc(3, Desc{buf, 64, kDescFNext, 300});
  auto p = r.q.pop_head(3, r.c);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error(), Errc::kNextOutOfRange);
  EXPECT_TRUE(r.q.broken());
  auto q = r.q.pop_head(300, r.c);  // head out of range, on a broken queue: still the first reason
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error(), Errc::kNextOutOfRange);
}

TEST(SplitQueueFault, PopHeadOutOfRange) {
  Rig r;
  auto p = r.q.pop_head(256, r.c);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error(), Errc::kHeadOutOfRange);
  EXPECT_TRUE(r.q.broken());
}

// A broken queue never writes the used ring again: completions of requests
// popped before it broke are dropped, and the used index stays where it was.
TEST(SplitQueueFault, BrokenQueueAcceptsNoPush) {
  for (bool in_order : {false, true}) {
    Rig r(QueueLayout{.in_order = in_order});
    r.drv.add_chain({}, k64);
    r.drv.ring().publish();
    auto p = r.q.pop(r.c);
    ASSERT_TRUE(p.ok() && p.value());
    uint16_t head = r.c.head();
    r.drv.poke_avail_idx(1000);
    EXPECT_FALSE(r.q.pop(r.c).ok());
    ASSERT_TRUE(r.q.broken());
    r.q.push(head, 64);
    EXPECT_EQ(r.q.pending_buffers(), 0u);
    EXPECT_FALSE(r.q.flush());
    EXPECT_EQ(r.q.ring_used_idx(), 0);
    (void)r.q.stop();
    EXPECT_EQ(r.drv.peek_used_idx(), 0);
    // Attached again (a front-end restarting the ring): still halted.
    ASSERT_TRUE(r.q.attach(r.guest.table()).ok());
    EXPECT_FALSE(r.q.running());
    r.q.push(head, 64);
    EXPECT_FALSE(r.q.flush());
    EXPECT_EQ(r.drv.peek_used_idx(), 0);
  }
}

// --- notifications (2.7.7, 2.7.10)
TEST(SplitQueueNotify, NoInterruptFlagWithoutEventIdx) {
  Rig r;
  r.drv.add_chain(k64, {});
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  r.drv.ring().set_interrupts(false);
  r.q.push(r.c.head(), 0);
  EXPECT_FALSE(r.q.flush());
  r.drv.ring().set_interrupts(true);
  r.drv.add_chain(k64, {});
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  r.q.push(r.c.head(), 0);
  EXPECT_TRUE(r.q.flush());
  EXPECT_FALSE(r.q.flush());  // nothing new: no interrupt
}

TEST(SplitQueueNotify, UsedEventDecidesInterrupts) {
  QueueLayout l;
  l.event_idx = true;
  Rig r(l);
  for (int i = 0; i < 8; ++i) r.drv.add_chain(k64, {});
  r.drv.ring().publish();
  // The driver wants an interrupt once used idx passes 4 (used_event = 4).
  virtq::store_relaxed<uint16_t>(r.drv.ring().avail_area() + avail_entry_off(l.size), 4);
  std::vector<bool> decisions;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 0);
    decisions.push_back(r.q.flush());
  }
  // used idx goes 1..8; need_event(4, new, old) is true only for new == 5.
  EXPECT_EQ(decisions, (std::vector<bool>{false, false, false, false, true, false, false, false}));
}

TEST(SplitQueueNotify, BatchedFlushCrossingEventInterruptsOnce) {
  QueueLayout l;
  l.event_idx = true;
  Rig r(l);
  for (int i = 0; i < 8; ++i) r.drv.add_chain(k64, {});
  r.drv.ring().publish();
  virtq::store_relaxed<uint16_t>(r.drv.ring().avail_area() + avail_entry_off(l.size), 2);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 0);
  }
  EXPECT_TRUE(r.q.flush());  // 0 -> 8 crosses used_event 2
}

TEST(SplitQueueNotify, KickSuppression) {
  Rig r;
  r.q.set_kick_notification(false);
  EXPECT_EQ(r.drv.peek_used_flags(), kUsedFNoNotify);
  r.drv.add_chain(k64, {});
  EXPECT_FALSE(r.drv.ring().publish());  // device asked for no kicks
  r.q.set_kick_notification(true);
  EXPECT_TRUE(r.q.has_available());  // the re-check catches the unkicked buffer
  r.drv.add_chain(k64, {});
  EXPECT_TRUE(r.drv.ring().publish());
}

TEST(SplitQueueNotify, AvailEventDecidesKicks) {
  QueueLayout l;
  l.event_idx = true;
  Rig r(l);
  r.q.set_kick_notification(true);  // avail_event = 0: kick when idx passes 0
  EXPECT_EQ(r.drv.peek_avail_event(), 0);
  r.drv.add_chain(k64, {});
  EXPECT_TRUE(r.drv.ring().publish());   // 0 -> 1 crosses 0
  r.drv.add_chain(k64, {});
  EXPECT_FALSE(r.drv.ring().publish());  // 1 -> 2 does not
  ASSERT_TRUE(r.q.pop(r.c).value());
  ASSERT_TRUE(r.q.pop(r.c).value());
  r.q.set_kick_notification(true);  // avail_event = 2
  EXPECT_EQ(r.drv.peek_avail_event(), 2);
  r.drv.add_chain(k64, {});
  EXPECT_TRUE(r.drv.ring().publish());
}

// --- wrap-around of the 16-bit indices, and a randomized run checked by the
// driver: every buffer comes back once, with the length the device reported.
void run_random(QueueLayout l, uint32_t rounds, uint32_t seed) {
  Rig r(l);
  std::mt19937 rng(seed);
  std::vector<std::pair<uint16_t, uint32_t>> held;  // popped, not yet pushed
  uint64_t next_token = 1, expect_token = 1;
  uint64_t returned = 0;
  std::vector<uint8_t> seen(1 << 20, 0);
  for (uint32_t round = 0; round < rounds; ++round) {
    // Driver: add a few chains while there is room.
    int adds = static_cast<int>(rng() % 6);
    for (int i = 0; i < adds; ++i) {
      uint32_t nd = 1 + static_cast<uint32_t>(rng() % 3);
      bool ind = l.indirect && (rng() % 3 == 0);
      if (!ind && r.drv.ring().free_descs() < nd) break;
      if (ind && r.drv.ring().free_descs() < 1) break;
      std::vector<uint32_t> rd(nd - 1, 16), wr(1, 64);
      r.drv.add_chain(rd, wr, ind, 0x11, next_token++);
    }
    r.drv.ring().publish();
    // Device: pop a burst, complete some (in order or shuffled), flush.
    for (;;) {
      auto p = r.q.pop(r.c);
      ASSERT_TRUE(p.ok()) << p.error().name();
      if (!p.value()) break;
      held.emplace_back(r.c.head(), static_cast<uint32_t>(r.c.writable_bytes()));
    }
    size_t n = held.empty() ? 0 : rng() % (held.size() + 1);
    if (!l.in_order) std::shuffle(held.begin(), held.begin() + static_cast<long>(n), rng);
    for (size_t i = 0; i < n; ++i) r.q.push(held[i].first, held[i].second);
    held.erase(held.begin(), held.begin() + static_cast<long>(n));
    r.q.flush();
    // Driver: reap and check.
    UsedBuf u{};
    for (;;) {
      auto g = r.drv.ring().get_used(u);
      ASSERT_TRUE(g.ok()) << g.error().name();
      if (!g.value()) break;
      ASSERT_LT(u.token, seen.size());
      EXPECT_EQ(seen[u.token], 0) << "buffer returned twice";
      seen[u.token] = 1;
      if (l.in_order) {
        EXPECT_EQ(u.token, expect_token++);
      }
      EXPECT_EQ(u.len, 64u);
      ++returned;
    }
  }
  EXPECT_GT(returned, rounds / 2);
  // The 16-bit indices wrapped at least once on long runs.
  if (rounds >= 40000) {
    EXPECT_GT(returned, 65536u);
  }
}

// A used slot is written only where it differs from what it holds (a line
// left alone stays in the driver's cache); whatever it held, the driver must
// read exactly the element pushed: each word is compared on its own.
void used_slot_exact_whatever_it_held(bool in_order) {
  Rig r({.size = 4, .in_order = in_order});
  const uint64_t used = r.drv.device_config().used_addr;
  // What the slot holds before the push, relative to {head, len}.
  enum Held { kSame, kOtherId, kOtherLen, kBothOther };
  for (Held held : {kSame, kOtherId, kOtherLen, kBothOther, kSame, kOtherLen}) {
    uint16_t slot = r.q.used_idx() & 3;
    uint16_t head = r.drv.add_chain({}, k64);
    r.drv.ring().publish();
    ASSERT_TRUE(r.q.pop(r.c).value());
    const uint32_t len = 40 + slot;
    UsedElem old{head, len};
    if (held == kOtherId || held == kBothOther) old.id = head ^ 1u;
    if (held == kOtherLen || held == kBothOther) old.len = len + 1;
    r.guest.write(used + used_entry_off(slot), std::as_bytes(std::span(&old, 1)));
    r.q.push(r.c.head(), len);
    r.q.flush();
    UsedElem e = r.drv.peek_used_elem(slot);
    EXPECT_EQ(e.id, head) << held;
    EXPECT_EQ(e.len, len) << held;
    UsedBuf u{};
    ASSERT_TRUE(r.drv.ring().get_used(u).value());
    EXPECT_EQ(u.head, head);
    EXPECT_EQ(u.len, len);
  }
}
TEST(SplitQueue, UsedSlotExactWhateverItHeld) { used_slot_exact_whatever_it_held(false); }
TEST(SplitQueue, InOrderUsedSlotExactWhateverItHeld) { used_slot_exact_whatever_it_held(true); }

TEST(SplitQueueRandom, PlainWrapsAround) { run_random({.size = 16}, 60000, 1); }
TEST(SplitQueueRandom, PlainEventIdx) { run_random({.size = 64, .event_idx = true}, 5000, 2); }
TEST(SplitQueueRandom, InOrderBatchWrapsAround) {
  run_random({.size = 16, .in_order = true}, 60000, 3);
}
TEST(SplitQueueRandom, InOrderPerBuffer) {
  run_random({.size = 32, .in_order = true, .batching = InOrderBatching::kPerBuffer}, 5000, 4);
}
TEST(SplitQueueRandom, NoIndirect) { run_random({.size = 8, .indirect = false}, 5000, 5); }

}  // namespace
}  // namespace sluice::virtq

namespace sluice::virtq {
namespace {

TEST(SplitDriverErrors, QueueFullAndBadArguments) {
  test::MockGuest g;
  test::MockDriver d(g, test::QueueLayout{.size = 4});
  const uint32_t wr[] = {8};
  for (int i = 0; i < 4; ++i) d.add_chain({}, wr);
  uint64_t a = g.alloc(64);
  std::vector<DriverBuf> one{{a, 8, true}};
  EXPECT_EQ(d.ring().add(one, false).error(), Errc::kQueueFull);
  EXPECT_EQ(d.ring().add({}, false).error(), Errc::kInvalidArgument);
  std::vector<DriverBuf> many(SplitDriver::kMaxIndirectPerHead + 1, DriverBuf{a, 8, true});
  EXPECT_EQ(d.ring().add(many, true).error(), Errc::kInvalidArgument);
}

TEST(SplitDriverErrors, PlainUsedIdNotOutstanding) {
  test::MockGuest g;
  test::MockDriver d(g, test::QueueLayout{.size = 8});
  const uint32_t wr[] = {8};
  uint16_t h = d.add_chain({}, wr);
  d.ring().publish();
  // A device that returns a head the driver never made available.
  store_relaxed<uint32_t>(d.ring().used_area() + used_entry_off(0), static_cast<uint32_t>(h + 1));
  store_release<uint16_t>(d.ring().used_area() + kUsedIdxOff, 1);
  UsedBuf u{};
  EXPECT_EQ(d.ring().get_used(u).error(), Errc::kUsedIdOutOfRange);
}

}  // namespace
}  // namespace sluice::virtq
