// The DMA mapper: applies plans to one container, reference-counts regions,
// and unmaps with the granularity it mapped.
//
// Book-keeping: `regions_` are what callers asked for (with a reference
// count: the same memory at the same IOVA mapped twice, e.g. by two
// vhost-user sessions of one VM, is one mapping, DmaRegion::same_memory); `entries_` are the kernel's mappings (one per
// MAP_DMA call, possibly covering several merged regions). TYPE1v2 refuses an
// unmap that splits a mapping, so when a region whose entry also covers other
// live regions goes away, the entry is unmapped whole and the survivors are
// mapped again (a brief window in which a device's DMA to the survivors
// faults; vhost-user memory removal is rare).
//
// An executor failure half way (the kernel refusing call k of n) unmaps calls
// 0..k-1 again: the container is left exactly as before.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/memory/guest_memory.h"
#include "vfio/container.h"
#include "vfio/dma_plan.h"

namespace sluice::vfio {

struct MapperStats {
  uint64_t map_calls = 0;    // VFIO_IOMMU_MAP_DMA issued (successful)
  uint64_t unmap_calls = 0;  // VFIO_IOMMU_UNMAP_DMA issued (successful)
  uint64_t rollbacks = 0;    // plans undone after a failed call
};

class DmaMapper {
 public:
  explicit DmaMapper(Container& c, PlanPolicy policy = PlanPolicy::kMinimal);
  DmaMapper(const DmaMapper&) = delete;
  DmaMapper& operator=(const DmaMapper&) = delete;
  // Unmaps everything it mapped.
  ~DmaMapper();

  // Maps the regions (all or none). A region identical to a mapped one takes
  // a reference; one that overlaps a mapped region otherwise is refused.
  Status map(std::span<const DmaRegion> regions);
  // Drops one reference per region (each must be mapped exactly so);
  // unmapped when the last reference goes.
  Status unmap(std::span<const DmaRegion> regions);
  // Unmaps everything (VFIO_DMA_UNMAP_FLAG_ALL when offered).
  Status unmap_all();

  // Kernel mappings in use (what counts against DMA_AVAIL).
  size_t kernel_mappings() const noexcept { return entries_.size(); }
  size_t regions() const noexcept { return regions_.size(); }
  uint32_t refs(const DmaRegion& r) const noexcept;
  // True when [iova, iova+len) is entirely inside mapped entries.
  bool is_mapped(uint64_t iova, uint64_t len) const noexcept;
  const MapperStats& stats() const noexcept { return stats_; }
  Container& container() noexcept { return *c_; }

 private:
  struct Live {
    DmaRegion r;
    uint32_t refs;
  };
  uint64_t available() const noexcept;
  // Plans and maps fresh regions; records entries. All or nothing.
  Status map_fresh(std::span<const DmaRegion> fresh);

  Container* c_;
  PlanPolicy policy_;
  std::map<uint64_t, Live> regions_;     // by iova
  std::map<uint64_t, MapCall> entries_;  // by iova
  MapperStats stats_;
};

// Keeps guest memory mapped for devices: a memory listener (IOVA = guest
// physical address, vaddr = our mapping of the region) that maps added
// regions and unmaps removed ones on every attached mapper. It runs on the
// control thread inside the publication of a new table, before the caller
// hands the table to any queue, so no queue sees a region before it is mapped.
class GuestMemoryDma : public MemoryListener {
 public:
  // Maps what the guest has now, then follows its changes.
  Status attach(DmaMapper* m, const MemoryTable& current);
  // Drops the guest's current regions from every mapper and forgets the
  // mappers (a session ending without a memory reset).
  void release(const MemoryTable& current);
  void detach(DmaMapper* m);
  Status on_memory_changed(const MemoryTable& table, std::span<const GuestRegion> added,
                           std::span<const GuestRegion> removed) override;
  static DmaRegion region_of(const GuestRegion& g);

 private:
  std::vector<DmaMapper*> mappers_;
};

}  // namespace sluice::vfio
