// The DMA planner: a pure function from memory regions to the fewest
// VFIO_IOMMU_MAP_DMA calls the IOMMU allows. No syscalls; the executor
// (dma_mapper.h) applies a plan.
//
// Rules (the kernel's type1 rules, applied before the kernel is touched):
// - vaddr, iova and size of every call are multiples of the smallest IOMMU
//   page (the lowest bit of iova_pgsizes);
// - every call lies inside one usable IOVA range; a region that crosses a
//   hole between ranges is split there and the hole is left unmapped; a
//   region below the first range or above the last is refused;
// - neighbours are merged when both their user addresses and their IOVAs are
//   contiguous (a run of hugetlbfs folios becomes one call: the kernel pins
//   whole folios per call, Linux 6.17's folio batching);
// - a plan needing more calls than DMA_AVAIL still allows is refused.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dataplane/base/result.h"
#include "vfio/info.h"

namespace sluice::vfio {

// What memory a region is, independent of where it is mapped in this
// process: the backing file and the offset in it (0/0/0: unknown).
struct BackingId {
  uint64_t dev = 0, ino = 0, offset = 0;
  bool known() const noexcept { return dev != 0 || ino != 0; }
  friend bool operator==(const BackingId&, const BackingId&) = default;
};

// A range of process memory to make visible to devices at `iova`.
struct DmaRegion {
  uint64_t vaddr = 0;
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t page_size = 4096;  // backing page size (hugetlbfs: the huge page size)
  BackingId backing{};
  friend bool operator==(const DmaRegion&, const DmaRegion&) = default;
  // The same memory at the same IOVA: mapped at the same address, or the
  // same pages of the same file mapped twice (two vhost-user sessions of one
  // VM each map the VM's memory fds). Such regions share one mapping.
  bool same_memory(const DmaRegion& o) const noexcept {
    return iova == o.iova && size == o.size &&
           (vaddr == o.vaddr || (backing.known() && backing == o.backing));
  }
};

// One VFIO_IOMMU_MAP_DMA.
struct MapCall {
  uint64_t vaddr = 0;
  uint64_t iova = 0;
  uint64_t size = 0;
  friend bool operator==(const MapCall&, const MapCall&) = default;
};

enum class PlanPolicy : uint8_t {
  kMinimal,   // merged runs, split only at IOVA holes: the fewest calls
  kPerFolio,  // one call per backing page (per hugetlbfs folio): a baseline
  kPerPage,   // one call per smallest IOMMU page: the naive baseline
};

struct DmaPlan {
  std::vector<MapCall> calls;  // sorted by iova
  uint64_t bytes = 0;          // bytes the calls map
  uint64_t skipped = 0;        // bytes of the regions that fall in IOVA holes
};

// `available` is how many more mappings the container accepts (DMA_AVAIL
// minus what is already mapped; UINT32_MAX when the kernel reports no limit).
Result<DmaPlan> plan_dma(std::span<const DmaRegion> regions, const IommuInfo& info,
                         PlanPolicy policy, uint64_t available);

}  // namespace sluice::vfio
