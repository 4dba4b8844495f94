// VFIO_IOMMU_GET_INFO for a type1 container: page sizes and the capability
// chain (IOVA ranges, DMA_AVAIL, migration), parsed from the raw bytes the
// kernel (or the fake) filled in. The bytes are treated as untrusted: every
// offset, length and count is bounded; a chain that points outside the
// buffer, backwards or at itself is refused (no loops).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "dataplane/base/result.h"

namespace sluice::vfio {

// An inclusive IOVA range, as the kernel reports it.
struct IovaRange {
  uint64_t start = 0;
  uint64_t last = 0;  // inclusive
  friend bool operator==(const IovaRange&, const IovaRange&) = default;
};

struct MigrationCap {
  uint32_t flags = 0;
  uint64_t pgsize_bitmap = 0;
  uint64_t max_dirty_bitmap_size = 0;
};

struct IommuInfo {
  uint64_t iova_pgsizes = 0;       // bitmap of IOMMU page sizes
  std::vector<IovaRange> ranges;   // usable IOVA, sorted, disjoint; all of 64 bits when absent
  std::optional<uint32_t> dma_avail;  // mappings still allowed; none = no limit reported
  std::optional<MigrationCap> migration;

  // The smallest IOMMU page: every map's vaddr, iova and size are multiples.
  uint64_t min_page() const noexcept { return iova_pgsizes & (~iova_pgsizes + 1); }
};

// The largest number of capabilities walked (the kernel reports three).
inline constexpr unsigned kMaxInfoCaps = 64;
// The largest info buffer accepted (IOVA ranges of a busy IOMMU fit easily).
inline constexpr size_t kMaxInfoBytes = 64 * 1024;

// Parses what VFIO_IOMMU_GET_INFO wrote. The buffer starts with struct
// vfio_iommu_type1_info; its argsz field must not claim more than the buffer.
Result<IommuInfo> parse_iommu_info(std::span<const std::byte> buf);

}  // namespace sluice::vfio
