// A popped descriptor chain: host spans over guest memory, no copy. Readable
// (driver-to-device) segments come first, then writable ones (2.7.4.2).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <vector>

namespace sluice::virtq {

class Chain {
 public:
  // Upper bound on host segments per chain (Linux's UIO_MAXIOV). A descriptor
  // that crosses a region edge becomes two segments.
  static constexpr uint32_t kMaxSegments = 1024;

  Chain() { iov_.reserve(kMaxSegments); }

  uint16_t head() const noexcept { return head_; }
  // Descriptors this chain occupies in the descriptor table (1 for an
  // indirect chain): the in-order cursor advances by this much.
  uint16_t table_descs() const noexcept { return table_descs_; }
  std::span<const iovec> readable() const noexcept { return {iov_.data(), nreadable_}; }
  std::span<const iovec> writable() const noexcept {
    return {iov_.data() + nreadable_, iov_.size() - nreadable_};
  }
  std::span<const iovec> all() const noexcept { return iov_; }
  uint64_t readable_bytes() const noexcept { return readable_bytes_; }
  uint64_t writable_bytes() const noexcept { return writable_bytes_; }

 private:
  friend class SplitQueue;
  void clear() noexcept {
    iov_.clear();  // keeps capacity: no allocation per request
    nreadable_ = 0;
    readable_bytes_ = writable_bytes_ = 0;
    table_descs_ = 0;
  }
  // False when the chain is already full.
  bool add(void* base, uint64_t len, bool writable) noexcept {
    if (iov_.size() == kMaxSegments) return false;
    iov_.push_back(iovec{base, static_cast<size_t>(len)});
    if (writable) {
      writable_bytes_ += len;
    } else {
      ++nreadable_;
      readable_bytes_ += len;
    }
    return true;
  }

  std::vector<iovec> iov_;
  size_t nreadable_ = 0;
  uint64_t readable_bytes_ = 0;
  uint64_t writable_bytes_ = 0;
  uint16_t head_ = 0;
  uint16_t table_descs_ = 0;
};

}  // namespace sluice::virtq
