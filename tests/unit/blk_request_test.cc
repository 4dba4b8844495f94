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

// Every request type in every legal descriptor framing (2.6.4: the device
// makes no assumption about how the driver splits a request into
// descriptors). The request's bytes are one stream, device-readable then
// device-writable: header | data or segments || data | status. It is cut into
// descriptors at every subset of a set of offsets (inside the header, at its
// end, inside and between payload parts, next to the status byte), each
// descriptor its own allocation, and the parse must find the same request:
// the same data bytes in order, the same segments, the status at the last byte.
struct Framing {
  uint32_t type;
  std::vector<std::byte> rd_payload;  // after the header
  uint32_t wr_payload;                // bytes before the status byte
  std::vector<uint32_t> rd_cuts;      // candidate cut offsets in the readable stream
  std::vector<uint32_t> wr_cuts;      // ... in the writable stream
};

std::vector<uint32_t> cuts_of(const std::vector<uint32_t>& cand, uint32_t mask, uint32_t len) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < cand.size(); ++i)
    if ((mask >> i & 1) && cand[i] > 0 && cand[i] < len) out.push_back(cand[i]);
  out.push_back(len);
  return out;
}

// Lays `bytes` out as one descriptor per piece between cuts.
void add_pieces(Rig& r, std::vector<DriverBuf>& bufs, std::span<const std::byte> bytes,
                const std::vector<uint32_t>& cuts, bool writable, std::vector<uint64_t>& gpas) {
  uint32_t at = 0;
  for (uint32_t end : cuts) {
    if (end == at) continue;
    uint64_t a = r.g.alloc(end - at);
    r.g.write(a, bytes.subspan(at, end - at));
    for (uint32_t i = at; i < end; ++i) gpas.push_back(a + (i - at));
    bufs.push_back({a, end - at, writable});
    at = end;
  }
}

TEST(BlkRequest, EveryTypeInEveryFraming) {
  std::vector<std::byte> data(1024);
  for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 + 3);
  DiscardSegment segs[2] = {{0x11, 8, 0}, {0x222, 16, 0}};
  std::vector<std::byte> seg_bytes(sizeof segs);
  std::memcpy(seg_bytes.data(), segs, sizeof segs);
  DiscardSegment wz[2] = {{0x33, 4, 1}, {0x400, 32, 0}};  // unmap allowed on write zeroes
  std::vector<std::byte> wz_bytes(sizeof wz);
  std::memcpy(wz_bytes.data(), wz, sizeof wz);
  const std::vector<Framing> cases = {
      {kTIn, {}, 1024, {8}, {1, 511, 512, 1023, 1024}},
      {kTOut, data, 0, {8, 16, 17, 528, 1039}, {}},
      {kTFlush, {}, 0, {8}, {}},
      {kTGetId, {}, kIdBytes, {8}, {1, 10, kIdBytes}},
      {kTDiscard, seg_bytes, 0, {8, 16, 24, 32, 40}, {}},
      {kTWriteZeroes, wz_bytes, 0, {8, 16, 24, 32, 40}, {}},
  };
  int framings = 0;
  for (const Framing& f : cases) {
    std::vector<std::byte> rd(sizeof(ReqHeader) + f.rd_payload.size());
    ReqHeader h{f.type, 0, 8};
    std::memcpy(rd.data(), &h, sizeof h);
    if (!f.rd_payload.empty())
      std::memcpy(rd.data() + sizeof h, f.rd_payload.data(), f.rd_payload.size());
    const auto rd_len = static_cast<uint32_t>(rd.size());
    const uint32_t wr_len = f.wr_payload + 1;
    std::vector<std::byte> wr(wr_len, std::byte{0xee});
    for (uint32_t rm = 0; rm < (1u << f.rd_cuts.size()); ++rm) {
      for (uint32_t wm = 0; wm < (1u << f.wr_cuts.size()); ++wm) {
        SCOPED_TRACE(testing::Message() << "type " << f.type << " rd cuts " << rm << " wr cuts " << wm);
        Rig r;
        std::vector<DriverBuf> bufs;
        std::vector<uint64_t> rd_gpa, wr_gpa;
        add_pieces(r, bufs, rd, cuts_of(f.rd_cuts, rm, rd_len), false, rd_gpa);
        add_pieces(r, bufs, wr, cuts_of(f.wr_cuts, wm, wr_len), true, wr_gpa);
        Request q;
        Status st = r.parse(bufs, q);
        ASSERT_TRUE(st.ok()) << st.error().name();
        ++framings;
        EXPECT_EQ(q.type, f.type);
        EXPECT_EQ(q.sector, 8u);
        EXPECT_EQ(q.status, reinterpret_cast<uint8_t*>(r.g.host(wr_gpa.back())));
        // The data iovecs, byte by byte, are exactly the payload's bytes.
        std::vector<uint64_t> want;
        if (f.type == kTOut) want.assign(rd_gpa.begin() + sizeof(ReqHeader), rd_gpa.end());
        if (f.type == kTIn || f.type == kTGetId) want.assign(wr_gpa.begin(), wr_gpa.end() - 1);
        std::vector<const std::byte*> got;
        for (uint32_t i = 0; i < q.iovcnt; ++i)
          for (size_t b = 0; b < q.iov[i].iov_len; ++b)
            got.push_back(static_cast<const std::byte*>(q.iov[i].iov_base) + b);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], r.g.host(want[i])) << "byte " << i;
        EXPECT_EQ(q.data_len, f.type == kTGetId ? kIdBytes : want.size());
        // Discard and write-zeroes segments are the ones the driver wrote.
        const auto nsegs = static_cast<uint32_t>(f.rd_payload.size() / sizeof(DiscardSegment));
        ASSERT_EQ(q.nsegs, (f.type == kTDiscard || f.type == kTWriteZeroes) ? nsegs : 0u);
        for (uint32_t i = 0; i < q.nsegs; ++i) {
          const DiscardSegment& w = (f.type == kTDiscard ? segs : wz)[i];
          EXPECT_EQ(q.segs[i].sector, w.sector) << "segment " << i;
          EXPECT_EQ(q.segs[i].num_sectors, w.num_sectors) << "segment " << i;
          EXPECT_EQ(q.segs[i].flags, w.flags) << "segment " << i;
        }
      }
    }
  }
  EXPECT_EQ(framings, 2 * 32 + 32 + 2 + 2 * 8 + 2 * 32);
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
