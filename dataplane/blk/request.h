// virtio-blk requests (virtio 1.2, section 5.2.6): a popped chain parsed into
// a typed request, or a named error. Parse, don't validate (STYLE.md rule 4).
//
// The request keeps pointing into the chain: data iovecs are the chain's own
// segments with the header and status bytes trimmed off, in place, so the
// request's I/O goes straight to guest memory.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

#include "dataplane/base/result.h"
#include "dataplane/virtq/chain.h"

namespace sluice::blk {

// Request types (5.2.6).
inline constexpr uint32_t kTIn = 0;
inline constexpr uint32_t kTOut = 1;
inline constexpr uint32_t kTFlush = 4;
inline constexpr uint32_t kTGetId = 8;
inline constexpr uint32_t kTDiscard = 11;
inline constexpr uint32_t kTWriteZeroes = 13;
// Status values.
inline constexpr uint8_t kSOk = 0;
inline constexpr uint8_t kSIoErr = 1;
inline constexpr uint8_t kSUnsupp = 2;

inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kIdBytes = 20;  // VIRTIO_BLK_ID_BYTES

struct ReqHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(ReqHeader) == 16);

// struct virtio_blk_discard_write_zeroes.
struct DiscardSegment {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;  // bit 0: unmap (write zeroes only)
};
static_assert(sizeof(DiscardSegment) == 16);

// What a disk accepts; the parser checks requests against it.
struct DiskLimits {
  uint64_t capacity_sectors = 0;
  bool read_only = false;
  uint32_t max_discard_sectors = 0;      // per segment
  uint32_t max_discard_segments = 1;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t max_write_zeroes_segments = 1;
};

struct Request {
  uint32_t type = 0;
  uint64_t sector = 0;
  // IN/OUT data (and GET_ID's buffer): guest memory, header/status trimmed.
  iovec* iov = nullptr;
  uint32_t iovcnt = 0;
  uint64_t data_len = 0;
  // DISCARD/WRITE_ZEROES segments, copied out of guest memory (bounded).
  static constexpr uint32_t kMaxSegments = 16;
  DiscardSegment segs[kMaxSegments];
  uint32_t nsegs = 0;
  // Where the status byte goes; null when the chain had no writable byte.
  uint8_t* status = nullptr;
};

// Parses c into r. On error, r.status is still set when the chain had a
// writable byte, so the caller can complete the request with IOERR/UNSUPP
// (the in-flight request always travels with its error).
Status parse_request(virtq::Chain& c, const DiskLimits& limits, Request& r);

// The status a parse error is reported with.
inline uint8_t status_for(Errc e) { return e == Errc::kBlkUnsupported ? kSUnsupp : kSIoErr; }

}  // namespace sluice::blk
