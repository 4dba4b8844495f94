// VIRTIO_F_IN_ORDER (bit 35): derived heads, batched used elements with head
// counts ("nheads"), the head-count storage lifecycle, discard + rewind, and a
// driver that holds the device to the spec (2.7.9).
#include <gtest/gtest.h>

#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

namespace sluice::virtq {
namespace {

using test::MockDriver;
using test::MockGuest;
using test::QueueLayout;

QueueLayout in_order(uint16_t size = 16, InOrderBatching b = InOrderBatching::kBatch) {
  QueueLayout l;
  l.size = size;
  l.in_order = true;
  l.batching = b;
  return l;
}

struct Rig {
  MockGuest guest;
  MockDriver drv;
  SplitQueue q;
  Chain c;
  explicit Rig(QueueLayout l) : drv(guest, l) {
    EXPECT_TRUE(q.configure(drv.device_config()).ok());
    EXPECT_TRUE(q.attach(guest.table()).ok());
    q.set_base(0);
  }
  uint16_t add(int ndesc, bool indirect = false) {
    std::vector<uint32_t> rd(static_cast<size_t>(ndesc - 1), 8);
    const uint32_t wr[] = {32};
    return drv.add_chain(rd, wr, indirect);
  }
};

TEST(InOrder, HeadIsDerivedNotReadFromAvailRing) {
  Rig r(in_order());
  EXPECT_EQ(r.add(3), 0);
  EXPECT_EQ(r.add(1), 3);
  EXPECT_EQ(r.add(2, true), 4);  // indirect: one table slot
  EXPECT_EQ(r.add(2), 5);
  r.drv.ring().publish();
  // Scribble over the avail ring past the first entry: after the first chain
  // (which locates the driver's table cursor) an in-order device must not
  // read it.
  for (uint16_t i = 1; i < 4; ++i) r.drv.poke_avail_entry(i, 0xffff);
  std::vector<uint16_t> heads;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    heads.push_back(r.c.head());
  }
  EXPECT_EQ(heads, (std::vector<uint16_t>{0, 3, 4, 5}));
  EXPECT_EQ(r.q.next_avail_head(), 7);
}

TEST(InOrder, DerivedHeadWrapsAtTableEnd) {
  Rig r(in_order(8));
  for (int round = 0; round < 5; ++round) {
    uint16_t h = r.add(3);
    r.drv.ring().publish();
    ASSERT_TRUE(r.q.pop(r.c).value());
    EXPECT_EQ(r.c.head(), h);
    EXPECT_EQ(r.c.table_descs(), 3);
    r.q.push(r.c.head(), 32);
    r.q.flush();
    UsedBuf u{};
    ASSERT_TRUE(r.drv.ring().get_used(u).value());
  }
  EXPECT_EQ(r.q.next_avail_head(), (5 * 3) % 8);
}

TEST(InOrder, BatchIsOneUsedElementWithHeadCount) {
  Rig r(in_order());
  std::vector<uint16_t> heads;
  for (int i = 0; i < 5; ++i) heads.push_back(r.add(2));
  r.drv.ring().publish();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  EXPECT_EQ(r.q.pending_buffers(), 5u);
  r.q.flush();
  // One element, at the slot of the batch's first buffer, naming the last
  // buffer; the used index skips forward by the batch size.
  EXPECT_EQ(r.drv.peek_used_idx(), 5);
  EXPECT_EQ(r.drv.peek_used_elem(0).id, heads.back());
  EXPECT_EQ(r.drv.peek_used_elem(1).id, 0u);  // skipped slots stay unwritten
  EXPECT_EQ(r.q.stats().used_elems, 1u);
  UsedBuf u{};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(r.drv.ring().get_used(u).value());
    EXPECT_EQ(u.head, heads[static_cast<size_t>(i)]);
    EXPECT_EQ(u.batch_skipped, i < 4);
  }
  EXPECT_FALSE(r.drv.ring().get_used(u).value());
}

TEST(InOrder, PerBufferPolicyReportsEachLength) {
  Rig r(in_order(16, InOrderBatching::kPerBuffer));
  for (int i = 0; i < 4; ++i) r.add(1);
  r.drv.ring().publish();
  for (uint32_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 10 + i);
  }
  r.q.flush();
  EXPECT_EQ(r.q.stats().used_elems, 4u);
  UsedBuf u{};
  for (uint32_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(r.drv.ring().get_used(u).value());
    EXPECT_EQ(u.len, 10 + i);
    EXPECT_FALSE(u.batch_skipped);
  }
}

TEST(InOrder, SeveralBatchesInOnePublication) {
  // The driver must walk batches by their ids, skipping forward each time.
  Rig r(in_order());
  for (int i = 0; i < 6; ++i) r.add(1);
  r.drv.ring().publish();
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(r.q.pop(r.c).value());
  // Hand-write two batches: {0,1,2} at slot 0 and {3,4,5} at slot 3.
  store_relaxed<uint32_t>(r.drv.ring().used_area() + used_entry_off(0), 2);
  store_relaxed<uint32_t>(r.drv.ring().used_area() + used_entry_off(3), 5);
  store_release<uint16_t>(r.drv.ring().used_area() + kUsedIdxOff, 6);
  UsedBuf u{};
  std::vector<bool> skipped;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(r.drv.ring().get_used(u).value());
    skipped.push_back(u.batch_skipped);
  }
  EXPECT_EQ(skipped, (std::vector<bool>{true, true, false, true, true, false}));
}

// --- the driver holds the device to the spec
TEST(InOrderDriverChecks, IdOutOfOrderIsRefused) {
  Rig r(in_order());
  for (int i = 0; i < 3; ++i) r.add(1);
  r.drv.ring().publish();
  // Used idx says 1 buffer, but the element names the third one.
  store_relaxed<uint32_t>(r.drv.ring().used_area() + used_entry_off(0), 2);
  store_release<uint16_t>(r.drv.ring().used_area() + kUsedIdxOff, 1);
  UsedBuf u{};
  EXPECT_EQ(r.drv.ring().get_used(u).error(), Errc::kUsedOutOfOrder);
}

TEST(InOrderDriverChecks, IdOutOfRangeIsRefused) {
  Rig r(in_order());
  r.add(1);
  r.drv.ring().publish();
  store_relaxed<uint32_t>(r.drv.ring().used_area() + used_entry_off(0), 999);
  store_release<uint16_t>(r.drv.ring().used_area() + kUsedIdxOff, 1);
  UsedBuf u{};
  EXPECT_EQ(r.drv.ring().get_used(u).error(), Errc::kUsedIdOutOfRange);
}

TEST(InOrderDriverChecks, UsedIndexPastOutstandingIsRefused) {
  Rig r(in_order());
  r.add(1);
  r.drv.ring().publish();
  store_relaxed<uint32_t>(r.drv.ring().used_area() + used_entry_off(0), 0);
  store_release<uint16_t>(r.drv.ring().used_area() + kUsedIdxOff, 2);
  UsedBuf u{};
  EXPECT_EQ(r.drv.ring().get_used(u).error(), Errc::kUsedIndexTooFar);
}

// --- head-count storage lifecycle
TEST(InOrderLifecycle, DestroyAndResetWithoutSetup) {
  {
    SplitQueue q;  // destroyed never configured: nothing to free
    EXPECT_EQ(q.nheads_capacity(), 0u);
  }
  SplitQueue q;
  q.reset();  // reset of a never-configured queue
  q.reset();  // and twice
  EXPECT_EQ(q.nheads_capacity(), 0u);
  EXPECT_EQ(q.stop(), 0);  // read-back of a never-started queue
  EXPECT_FALSE(q.flush());
}

TEST(InOrderLifecycle, CreatedOnlyForInOrderQueues) {
  MockGuest g;
  MockDriver plain(g, QueueLayout{.size = 64});
  SplitQueue q;
  ASSERT_TRUE(q.configure(plain.device_config()).ok());
  EXPECT_EQ(q.nheads_capacity(), 0u);
  MockDriver io(g, in_order(64));
  ASSERT_TRUE(q.configure(io.device_config()).ok());
  EXPECT_EQ(q.nheads_capacity(), 64u);
  ASSERT_TRUE(q.configure(plain.device_config()).ok());  // features renegotiated
  EXPECT_EQ(q.nheads_capacity(), 0u);
}

TEST(InOrderLifecycle, ResizedWithQueueSize) {
  MockGuest g;
  MockDriver a(g, in_order(256));
  MockDriver b(g, in_order(32));
  SplitQueue q;
  ASSERT_TRUE(q.configure(a.device_config()).ok());
  EXPECT_EQ(q.nheads_capacity(), 256u);
  ASSERT_TRUE(q.configure(b.device_config()).ok());
  EXPECT_EQ(q.nheads_capacity(), 32u);
  // The resized queue works end to end.
  ASSERT_TRUE(q.attach(g.table()).ok());
  q.set_base(0);
  for (int i = 0; i < 40; ++i) {
    const uint32_t wr[] = {8};
    b.add_chain({}, wr);
    b.ring().publish();
    Chain c;
    ASSERT_TRUE(q.pop(c).value());
    q.push(c.head(), 8);
    q.flush();
    UsedBuf u{};
    ASSERT_TRUE(b.ring().get_used(u).value());
  }
}

TEST(InOrderLifecycle, FlushedBeforeReadBack) {
  Rig r(in_order());
  for (int i = 0; i < 3; ++i) r.add(1);
  r.drv.ring().publish();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  EXPECT_EQ(r.drv.peek_used_idx(), 0);  // batch still pending
  uint16_t base = r.q.stop();            // GET_VRING_BASE
  EXPECT_EQ(base, 3);
  EXPECT_EQ(r.drv.peek_used_idx(), 3);   // what the driver saw agrees with the base
  EXPECT_EQ(r.drv.peek_used_elem(0).id, 2u);
  // Restart from the base, as a reconnecting front-end would.
  ASSERT_TRUE(r.q.attach(r.guest.table()).ok());
  r.q.set_base(base);
  r.add(1);
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.head(), 3);
}

TEST(InOrderLifecycle, RestartWithMultiDescriptorChainsFindsTheTableCursor) {
  // After 2 chains of 3 descriptors the avail index is 2 but the driver's
  // table cursor is 6: a restarted device must not derive its first head
  // from the index.
  Rig r(in_order(16));
  r.add(3);
  r.add(3);
  r.drv.ring().publish();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  uint16_t base = r.q.stop();
  UsedBuf u{};
  while (r.drv.ring().get_used(u).value()) {
  }
  SplitQueue fresh;
  ASSERT_TRUE(fresh.configure(r.drv.device_config()).ok());
  ASSERT_TRUE(fresh.attach(r.guest.table()).ok());
  fresh.set_base(base);
  EXPECT_EQ(r.add(2), 6);
  EXPECT_EQ(r.add(1), 8);
  r.drv.ring().publish();
  Chain c;
  ASSERT_TRUE(fresh.pop(c).value());
  EXPECT_EQ(c.head(), 6);
  EXPECT_EQ(c.table_descs(), 2);
  ASSERT_TRUE(fresh.pop(c).value());
  EXPECT_EQ(c.head(), 8);  // derived from there on
}

TEST(InOrderLifecycle, ResetMidBatchDropsStorage) {
  Rig r(in_order());
  for (int i = 0; i < 3; ++i) r.add(1);
  r.drv.ring().publish();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  r.q.reset();  // device reset: pending completions are dropped, not written
  EXPECT_EQ(r.q.nheads_capacity(), 0u);
  EXPECT_EQ(r.q.pending_buffers(), 0u);
  EXPECT_EQ(r.drv.peek_used_idx(), 0);
  EXPECT_FALSE(r.q.flush());  // a reset queue writes nothing
  // And it comes back cleanly.
  ASSERT_TRUE(r.q.configure(r.drv.device_config()).ok());
  EXPECT_EQ(r.q.nheads_capacity(), 16u);
}

TEST(InOrderLifecycle, DiscardRewindsBothCursors) {
  Rig r(in_order());
  uint16_t h0 = r.add(3);
  uint16_t h1 = r.add(2);
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.head(), h1);
  EXPECT_EQ(r.q.last_avail_idx(), 2);
  EXPECT_EQ(r.q.next_avail_head(), 5);
  r.q.discard(1, r.c.table_descs());  // e.g. no room in the backend: retry later
  EXPECT_EQ(r.q.last_avail_idx(), 1);
  EXPECT_EQ(r.q.next_avail_head(), 3);
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.head(), h1);  // the same chain again, not the descriptor after it
  r.q.discard(2, 5);
  EXPECT_EQ(r.q.next_avail_head(), h0);
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.c.head(), h0);
}

TEST(InOrderLifecycle, DiscardRewindWrapsBelowZero) {
  Rig r(in_order(8));
  // Move the cursor to 6, then pop a 4-descriptor chain that wraps (6,7,0,1).
  r.add(3);
  r.add(3);
  r.drv.ring().publish();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  r.q.flush();
  UsedBuf u{};
  while (r.drv.ring().get_used(u).value()) {
  }
  uint16_t h = r.add(4);
  EXPECT_EQ(h, 6);
  r.drv.ring().publish();
  ASSERT_TRUE(r.q.pop(r.c).value());
  EXPECT_EQ(r.q.next_avail_head(), 2);
  r.q.discard(1, r.c.table_descs());
  EXPECT_EQ(r.q.next_avail_head(), 6);
}

TEST(InOrderLifecycle, StopPublishesBatchSoRestartNeverRepeatsOrLoses) {
  // Read back mid-run with a batch pending, restart, complete the rest: the
  // driver sees every buffer exactly once, in order.
  Rig r(in_order(16));
  for (int i = 0; i < 10; ++i) r.add(1);
  r.drv.ring().publish();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(r.q.pop(r.c).value());
    r.q.push(r.c.head(), 32);
  }
  uint16_t base = r.q.stop();
  EXPECT_EQ(base, 6);
  SplitQueue fresh;  // a new back-end instance takes over (reconnect)
  ASSERT_TRUE(fresh.configure(r.drv.device_config()).ok());
  ASSERT_TRUE(fresh.attach(r.guest.table()).ok());
  fresh.set_base(base);
  Chain c;
  while (fresh.pop(c).value()) fresh.push(c.head(), 32);
  fresh.flush();
  UsedBuf u{};
  int n = 0;
  while (r.drv.ring().get_used(u).value()) EXPECT_EQ(u.head, n++);
  EXPECT_EQ(n, 10);
}

}  // namespace
}  // namespace sluice::virtq
