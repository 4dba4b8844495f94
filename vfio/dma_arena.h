// Memory a driver over VFIO shares with its device: rings, request headers,
// data buffers. One allocation (2 MiB hugetlbfs pages when the system has
// them, else 4 KiB pages), mapped into the container at a chosen IOVA through
// the DMA mapper, with a bump allocator handing out IOVAs and a MemoryTable
// that turns them back into host addresses (the driver-side ring reads it).
#pragma once

#include <cstdint>
#include <memory>

#include "dataplane/base/result.h"
#include "dataplane/memory/guest_memory.h"
#include "vfio/dma_mapper.h"

namespace sluice::vfio {

class DmaArena {
 public:
  // `size` is rounded up to the page size used.
  static Result<std::unique_ptr<DmaArena>> create(DmaMapper& mapper, uint64_t iova, uint64_t size,
                                                  bool prefer_huge = true);
  DmaArena(const DmaArena&) = delete;
  DmaArena& operator=(const DmaArena&) = delete;
  ~DmaArena();

  // A zeroed block; returns its IOVA. kQueueFull when the arena is exhausted.
  Result<uint64_t> alloc(uint64_t size, uint64_t align = 64);
  // Host address of [iova, iova+len), or nullptr if it is not all inside.
  std::byte* host(uint64_t iova, uint64_t len = 1) const noexcept;
  const MemoryTable& table() const noexcept { return *table_; }
  uint64_t iova() const noexcept { return iova_; }
  uint64_t size() const noexcept { return size_; }
  uint64_t page_size() const noexcept { return page_; }

 private:
  DmaArena() = default;
  DmaMapper* mapper_ = nullptr;
  void* base_ = nullptr;
  uint64_t iova_ = 0, size_ = 0, page_ = 4096, used_ = 0;
  DmaRegion region_{};
  std::unique_ptr<MemoryTable> table_;
};

}  // namespace sluice::vfio
