#include "dataplane/base/mapped_region.h"

#include <sys/mman.h>

#include <cerrno>

namespace sluice {

Result<MappedRegion> MappedRegion::map_shared(int fd, size_t len, uint64_t offset,
                                              int prot, int extra_flags) {
  if (len == 0) return Errc::kInvalidArgument;
  // SAFETY: a fresh mapping chosen by the kernel; nothing else refers to it.
  void* p = ::mmap(nullptr, len, prot, MAP_SHARED | extra_flags, fd,
                   static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Error::from_errno(errno);
  return MappedRegion(p, len);
}

Result<MappedRegion> MappedRegion::map_anonymous(size_t len, int prot, int extra_flags) {
  if (len == 0) return Errc::kInvalidArgument;
  // SAFETY: as above, anonymous memory owned by this object alone.
  void* p = ::mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
  if (p == MAP_FAILED) return Error::from_errno(errno);
  return MappedRegion(p, len);
}

void MappedRegion::reset() noexcept {
  if (addr_ != nullptr) ::munmap(addr_, len_);
  addr_ = nullptr;
  len_ = 0;
}

}  // namespace sluice
