#include "dataplane/blk/request.h"

#include <algorithm>
#include <cstring>

namespace sluice::blk {

namespace {

// Copies n bytes starting `skip` bytes into the segments (the caller checked
// that they hold that much). Guest memory is read once, into dst.
void gather(std::span<const iovec> segs, uint64_t skip, void* dst, size_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (const iovec& v : segs) {
    if (n == 0) return;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    size_t take = std::min<size_t>(v.iov_len - skip, n);
    std::memcpy(out, static_cast<const uint8_t*>(v.iov_base) + skip, take);
    out += take;
    n -= take;
    skip = 0;
  }
}

// Drops the first `n` bytes of segs[0..count) in place; returns the index of
// the first segment that still has bytes.
uint32_t trim_front(iovec* segs, uint32_t count, uint64_t n) {
  uint32_t i = 0;
  while (i < count && n >= segs[i].iov_len) {
    n -= segs[i].iov_len;
    ++i;
  }
  if (i < count && n > 0) {
    segs[i].iov_base = static_cast<uint8_t*>(segs[i].iov_base) + n;
    segs[i].iov_len -= n;
  }
  return i;
}

bool in_range(uint64_t sector, uint64_t sectors, uint64_t capacity) {
  uint64_t end;
  return !__builtin_add_overflow(sector, sectors, &end) && end <= capacity;
}

}  // namespace

Status parse_request(virtq::Chain& c, const DiskLimits& limits, Request& r) {
  r.status = nullptr;
  r.iov = nullptr;
  r.iovcnt = 0;
  r.data_len = 0;
  r.nsegs = 0;
  std::span<iovec> all = c.mutable_all();
  const uint32_t nrd = c.nreadable();
  const auto nwr = static_cast<uint32_t>(all.size()) - nrd;
  // 5.2.6: the last byte the driver offers for writing is the status.
  if (c.writable_bytes() == 0) return Errc::kBlkNoStatus;
  iovec& last = all[all.size() - 1];
  r.status = static_cast<uint8_t*>(last.iov_base) + last.iov_len - 1;
  if (c.readable_bytes() < sizeof(ReqHeader)) return Errc::kBlkShortHeader;
  ReqHeader h;
  gather(c.readable(), 0, &h, sizeof h);
  r.type = h.type;
  r.sector = h.sector;

  // Readable data after the header, writable data before the status byte,
  // both trimmed in place.
  uint64_t rd_len = c.readable_bytes() - sizeof h;
  uint64_t wr_len = c.writable_bytes() - 1;
  iovec* rd = all.data();
  uint32_t rd_first = trim_front(rd, nrd, sizeof h);
  iovec* wr = all.data() + nrd;
  uint32_t wr_count = nwr;
  if (--last.iov_len == 0) --wr_count;

  switch (h.type) {
    case kTIn:
    case kTOut: {
      bool in = h.type == kTIn;
      if ((in ? rd_len : wr_len) != 0) return Errc::kBlkBadDirection;
      if (!in && limits.read_only) return Errc::kBlkReadOnly;
      uint64_t len = in ? wr_len : rd_len;
      if (len % kSectorSize != 0) return Errc::kBlkUnaligned;
      if (!in_range(h.sector, len / kSectorSize, limits.capacity_sectors))
        return Errc::kBlkOutOfRange;
      r.iov = in ? wr : rd + rd_first;
      r.iovcnt = in ? wr_count : nrd - rd_first;
      r.data_len = len;
      return {};
    }
    case kTFlush:
      return {};  // no data; any the driver attached is ignored
    case kTGetId:
      if (rd_len != 0) return Errc::kBlkBadDirection;
      r.iov = wr;
      r.iovcnt = wr_count;
      r.data_len = std::min<uint64_t>(wr_len, kIdBytes);
      return {};
    case kTDiscard:
    case kTWriteZeroes: {
      bool discard = h.type == kTDiscard;
      if (limits.read_only) return Errc::kBlkReadOnly;
      if (wr_len != 0) return Errc::kBlkBadDirection;
      uint32_t max_segs = std::min(Request::kMaxSegments, discard ? limits.max_discard_segments
                                                                  : limits.max_write_zeroes_segments);
      uint32_t max_sectors = discard ? limits.max_discard_sectors : limits.max_write_zeroes_sectors;
      if (rd_len == 0 || rd_len % sizeof(DiscardSegment) != 0 ||
          rd_len / sizeof(DiscardSegment) > max_segs)
        return Errc::kBlkBadSegments;
      r.nsegs = static_cast<uint32_t>(rd_len / sizeof(DiscardSegment));
      // From the segments as trimmed above: the header is already off the
      // front, also where it shared a descriptor with the first segment.
      gather({rd + rd_first, nrd - rd_first}, 0, r.segs, rd_len);  // one copy; only ours is used
      for (uint32_t i = 0; i < r.nsegs; ++i) {
        const DiscardSegment& s = r.segs[i];
        // 5.2.6.2: unmap is only meaningful for write zeroes; unknown flags
        // are unsupported.
        if (s.flags & ~(discard ? 0u : 1u)) return Errc::kBlkUnsupported;
        if (s.num_sectors == 0 || s.num_sectors > max_sectors) return Errc::kBlkBadSegments;
        if (!in_range(s.sector, s.num_sectors, limits.capacity_sectors))
          return Errc::kBlkOutOfRange;
      }
      return {};
    }
    default:
      return Errc::kBlkUnsupported;
  }
}

}  // namespace sluice::blk
