// virtio-blk request parsing: one test per named error, and the in-place
// trimming that leaves data iovecs pointing at guest memory.
#include <cstring>

#include <gtest/gtest.h>

#include "dataplane/blk/request.h"
#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

namespace sluice::blk {
namespace {

using virtq::DriverBuf;

struct Rig {
  test::MockGuest g;
  test::MockDriver d{g, test::QueueLayout{.size = 64}};
  virtq::SplitQueue q;
  virtq::Chain c;
  DiskLimits lim{.capacity_sectors = 2048, .read_only = false, .max_discard_sectors = 1024,
                 .max_discard_segments = 4, .max_write_zeroes_sectors = 1024,
                 .max_write_zeroes_segments = 4};
  Rig() {
    EXPECT_TRUE(q.configure(d.device_config()).ok());
    EXPECT_TRUE(q.attach(g.table()).ok());
    q.set_base(0);
  }
  uint64_t header(uint32_t type, uint64_t sector, uint32_t len = 16) {
    uint64_t a = g.alloc(len < 16 ? 16 : len);
    ReqHeader h{type, 0, sector};
    g.write(a, std::as_bytes(std::span(&h, 1)));
    return a;
  }
  Status parse(std::vector<DriverBuf> bufs, Request& r) {
    EXPECT_TRUE(d.ring().add(bufs, false).ok());
    d.ring().publish();
    auto p = q.pop(c);
    EXPECT_TRUE(p.ok() && p.value());
    return parse_request(c, lim, r);
  }
};

TEST(BlkRequest, ReadTrimsStatusOff) {
  Rig r;
  uint64_t data = r.g.alloc(4096), st = r.g.alloc(1);
  Request q;
  ASSERT_TRUE(r.parse({{r.header(kTIn, 8), 16, false}, {data, 4096, true}, {st, 1, true}}, q).ok());
  EXPECT_EQ(q.type, kTIn);
  EXPECT_EQ(q.sector, 8u);
  EXPECT_EQ(q.iovcnt, 1u);
  EXPECT_EQ(q.data_len, 4096u);
  EXPECT_EQ(q.iov[0].iov_base, r.g.host(data));
  EXPECT_EQ(q.status, reinterpret_cast<uint8_t*>(r.g.host(st)));
}

TEST(BlkRequest, StatusSharingTheDataBuffer) {
  Rig r;
  uint64_t data = r.g.alloc(513);
  Request q;
  ASSERT_TRUE(r.parse({{r.header(kTIn, 0), 16, false}, {data, 513, true}}, q).ok());
  EXPECT_EQ(q.data_len, 512u);
  EXPECT_EQ(q.iov[0].iov_len, 512u);
  EXPECT_EQ(q.status, reinterpret_cast<uint8_t*>(r.g.host(data)) + 512);
}

TEST(BlkRequest, WriteWithHeaderAndDataInOneBuffer) {
  Rig r;
  uint64_t hd = r.header(kTOut, 4, 16 + 1024), st = r.g.alloc(1);
  Request q;
  ASSERT_TRUE(r.parse({{hd, 16 + 1024, false}, {st, 1, true}}, q).ok());
  EXPECT_EQ(q.data_len, 1024u);
  ASSERT_EQ(q.iovcnt, 1u);
  EXPECT_EQ(q.iov[0].iov_base, r.g.host(hd) + 16);
}

TEST(BlkRequest, DiscardSegmentsAreCopied) {
  Rig r;
  uint64_t segs = r.g.alloc(32), st = r.g.alloc(1);
  DiscardSegment s[2] = {{0, 8, 0}, {100, 16, 0}};
  r.g.write(segs, std::as_bytes(std::span(s)));
  Request q;
  ASSERT_TRUE(r.parse({{r.header(kTDiscard, 0), 16, false}, {segs, 32, false}, {st, 1, true}}, q).ok());
  ASSERT_EQ(q.nsegs, 2u);
  EXPECT_EQ(q.segs[1].sector, 100u);
}

TEST(BlkRequestErrors, NoStatus) {
  Rig r;
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTIn, 0), 16, false}}, q).error(), Errc::kBlkNoStatus);
  EXPECT_EQ(q.status, nullptr);
}

TEST(BlkRequestErrors, ShortHeader) {
  Rig r;
  uint64_t st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTIn, 0), 8, false}, {st, 1, true}}, q).error(),
            Errc::kBlkShortHeader);
  EXPECT_NE(q.status, nullptr);  // still reportable
  EXPECT_EQ(status_for(Errc::kBlkShortHeader), kSIoErr);
}

TEST(BlkRequestErrors, BadDirection) {
  Rig r;
  uint64_t data = r.g.alloc(512), st = r.g.alloc(1);
  Request q;
  // A read whose data the driver marked device-readable.
  EXPECT_EQ(r.parse({{r.header(kTIn, 0), 16, false}, {data, 512, false}, {st, 1, true}}, q).error(),
            Errc::kBlkBadDirection);
}

TEST(BlkRequestErrors, Unaligned) {
  Rig r;
  uint64_t data = r.g.alloc(1000), st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTIn, 0), 16, false}, {data, 1000, true}, {st, 1, true}}, q).error(),
            Errc::kBlkUnaligned);
}

TEST(BlkRequestErrors, OutOfRange) {
  Rig r;
  uint64_t data = r.g.alloc(1024), st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTIn, 2047), 16, false}, {data, 1024, true}, {st, 1, true}}, q).error(),
            Errc::kBlkOutOfRange);
  EXPECT_EQ(r.parse({{r.header(kTIn, ~0ull - 1), 16, false}, {data, 1024, true}, {st, 1, true}}, q)
                .error(),
            Errc::kBlkOutOfRange);  // sector + count overflows
}

TEST(BlkRequestErrors, ReadOnly) {
  Rig r;
  r.lim.read_only = true;
  uint64_t data = r.g.alloc(512), st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTOut, 0), 16, false}, {data, 512, false}, {st, 1, true}}, q).error(),
            Errc::kBlkReadOnly);
}

TEST(BlkRequestErrors, Unsupported) {
  Rig r;
  uint64_t st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(2 /* SCSI */, 0), 16, false}, {st, 1, true}}, q).error(),
            Errc::kBlkUnsupported);
  EXPECT_EQ(status_for(Errc::kBlkUnsupported), kSUnsupp);
  // Discard with the unmap flag is unsupported too (5.2.6.2).
  uint64_t segs = r.g.alloc(16);
  DiscardSegment s{0, 8, 1};
  r.g.write(segs, std::as_bytes(std::span(&s, 1)));
  EXPECT_EQ(r.parse({{r.header(kTDiscard, 0), 16, false}, {segs, 16, false}, {st, 1, true}}, q)
                .error(),
            Errc::kBlkUnsupported);
}

TEST(BlkRequestErrors, BadSegments) {
  Rig r;
  uint64_t segs = r.g.alloc(16 * 5), st = r.g.alloc(1);
  Request q;
  EXPECT_EQ(r.parse({{r.header(kTDiscard, 0), 16, false}, {segs, 24, false}, {st, 1, true}}, q)
                .error(),
            Errc::kBlkBadSegments);  // not a multiple of 16
  EXPECT_EQ(r.parse({{r.header(kTWriteZeroes, 0), 16, false}, {segs, 80, false}, {st, 1, true}}, q)
                .error(),
            Errc::kBlkBadSegments);  // 5 segments, limit 4
  DiscardSegment big{0, 2000, 0};
  r.g.write(segs, std::as_bytes(std::span(&big, 1)));
  EXPECT_EQ(r.parse({{r.header(kTDiscard, 0), 16, false}, {segs, 16, false}, {st, 1, true}}, q)
                .error(),
            Errc::kBlkBadSegments);  // above max_discard_sectors
}

}  // namespace
}  // namespace sluice::blk
