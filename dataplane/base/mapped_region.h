// MappedRegion: a move-only owner of one mmap()ed range (STYLE.md rule 9).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "dataplane/base/result.h"

namespace sluice {

class MappedRegion {
 public:
  MappedRegion() noexcept = default;
  MappedRegion(MappedRegion&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
  MappedRegion& operator=(MappedRegion&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      len_ = std::exchange(o.len_, 0);
    }
    return *this;
  }
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion() { reset(); }

  // mmap(nullptr, len, prot, MAP_SHARED | extra_flags, fd, offset).
  static Result<MappedRegion> map_shared(int fd, size_t len, uint64_t offset,
                                         int prot, int extra_flags = 0);
  // Anonymous private memory (tests, benchmarks).
  static Result<MappedRegion> map_anonymous(size_t len, int prot, int extra_flags = 0);

  std::byte* data() const noexcept { return static_cast<std::byte*>(addr_); }
  size_t size() const noexcept { return len_; }
  bool valid() const noexcept { return addr_ != nullptr; }
  void reset() noexcept;

 private:
  MappedRegion(void* a, size_t l) noexcept : addr_(a), len_(l) {}
  void* addr_ = nullptr;
  size_t len_ = 0;
};

}  // namespace sluice
