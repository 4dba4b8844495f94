// A popped descriptor chain: host spans over guest memory, no copy. Readable
// (driver-to-device) segments come first, then writable ones (2.7.4.2).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

namespace sluice::virtq {

class Chain {
 public:
  // Upper bound on host segments per chain (Linux's UIO_MAXIOV). A descriptor
  // that crosses a region edge becomes two segments.
  static constexpr uint32_t kMaxSegments = 1024;

  Chain() = default;
  Chain(const Chain&) = delete;
  Chain& operator=(const Chain&) = delete;

  uint16_t head() const noexcept { return head_; }
  // Descriptors this chain occupies in the descriptor table (1 for an
  // indirect chain): the in-order cursor advances by this much.
  uint16_t table_descs() const noexcept { return table_descs_; }
  std::span<const iovec> readable() const noexcept { return {iov_, nreadable_}; }
  std::span<const iovec> writable() const noexcept { return {iov_ + nreadable_, n_ - nreadable_}; }
  std::span<const iovec> all() const noexcept { return {iov_, n_}; }
  // The segments, writable in place: a device model may trim them (drop a
  // header or status byte) before handing them to I/O.
  std::span<iovec> mutable_all() noexcept { return {iov_, n_}; }
  uint32_t nreadable() const noexcept { return nreadable_; }
  uint64_t readable_bytes() const noexcept { return bytes_[0]; }
  uint64_t writable_bytes() const noexcept { return bytes_[1]; }

 private:
  friend class SplitQueue;
  void clear(uint16_t head) noexcept {
    n_ = nreadable_ = 0;
    bytes_[0] = bytes_[1] = 0;
    head_ = head;
    table_descs_ = 0;
  }
  // False when the chain is already full. Branch-free on the direction.
  bool add(void* base, uint64_t len, bool writable) noexcept {
    if (n_ == kMaxSegments) return false;
    iov_[n_++] = iovec{base, static_cast<size_t>(len)};
    nreadable_ += !writable;
    bytes_[writable] += len;
    return true;
  }

  // A fixed array, not a vector: a Chain is made once per worker and reused,
  // and filling it never allocates.
  uint32_t n_ = 0;
  uint32_t nreadable_ = 0;
  uint64_t bytes_[2] = {0, 0};  // readable, writable
  uint16_t head_ = 0;
  uint16_t table_descs_ = 0;
  iovec iov_[kMaxSegments];
};

}  // namespace sluice::virtq
