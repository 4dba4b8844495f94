#include "vfio/dma_arena.h"

#include <linux/mman.h>
#include <sys/mman.h>

#include <cstring>

namespace sluice::vfio {

Result<std::unique_ptr<DmaArena>> DmaArena::create(DmaMapper& mapper, uint64_t iova, uint64_t size,
                                                   bool prefer_huge) {
  if (size == 0) return Errc::kInvalidArgument;
  std::unique_ptr<DmaArena> a(new DmaArena());
  a->mapper_ = &mapper;
  constexpr uint64_t k2M = 2u << 20;
  if (prefer_huge) {
    uint64_t len = (size + k2M - 1) & ~(k2M - 1);
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB | MAP_POPULATE, -1, 0);
    if (p != MAP_FAILED) {
      a->base_ = p;
      a->size_ = len;
      a->page_ = k2M;
    }
  }
  if (a->base_ == nullptr) {
    uint64_t len = (size + 4095) & ~uint64_t{4095};
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return Error::from_errno(errno);
    a->base_ = p;
    a->size_ = len;
    a->page_ = 4096;
  }
  a->iova_ = iova;
  a->region_ = DmaRegion{reinterpret_cast<uint64_t>(a->base_), iova, a->size_, a->page_, {}};
  if (Status s = mapper.map(std::span(&a->region_, 1)); !s.ok()) {
    a->mapper_ = nullptr;  // nothing to unmap
    return s.error();
  }
  GuestRegion g;
  g.guest_phys = iova;
  g.size = a->size_;
  g.user_addr = reinterpret_cast<uint64_t>(a->base_);
  g.host = static_cast<std::byte*>(a->base_);
  g.page_size = a->page_;
  g.hugetlbfs = a->page_ != 4096;
  a->table_ = std::make_unique<MemoryTable>(std::vector<GuestRegion>{g});
  return a;
}

DmaArena::~DmaArena() {
  if (mapper_ != nullptr) (void)mapper_->unmap(std::span(&region_, 1));
  if (base_ != nullptr) ::munmap(base_, size_);
}

Result<uint64_t> DmaArena::alloc(uint64_t size, uint64_t align) {
  if (size == 0 || align == 0 || (align & (align - 1)) != 0) return Errc::kInvalidArgument;
  uint64_t at = (used_ + align - 1) & ~(align - 1);
  if (at > size_ || size > size_ - at) return Errc::kQueueFull;
  used_ = at + size;
  std::memset(static_cast<std::byte*>(base_) + at, 0, size);
  return iova_ + at;
}

std::byte* DmaArena::host(uint64_t iova, uint64_t len) const noexcept {
  if (iova < iova_ || iova - iova_ > size_ || len > size_ - (iova - iova_)) return nullptr;
  return static_cast<std::byte*>(base_) + (iova - iova_);
}

}  // namespace sluice::vfio
