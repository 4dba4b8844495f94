#include "vfio/dma_plan.h"

#include <algorithm>

namespace sluice::vfio {

namespace {

// Emits [vaddr, vaddr+size) at iova as calls under the policy. `page` is the
// chunk for the per-page and per-folio policies.
void emit(DmaPlan& plan, uint64_t vaddr, uint64_t iova, uint64_t size, PlanPolicy policy,
          uint64_t page) {
  plan.bytes += size;
  if (policy == PlanPolicy::kMinimal) {
    plan.calls.push_back(MapCall{vaddr, iova, size});
    return;
  }
  while (size > 0) {
    // Chunks end at page boundaries of the user address (whole folios).
    uint64_t chunk = std::min(size, page - (vaddr & (page - 1)));
    plan.calls.push_back(MapCall{vaddr, iova, chunk});
    vaddr += chunk;
    iova += chunk;
    size -= chunk;
  }
}

}  // namespace

Result<DmaPlan> plan_dma(std::span<const DmaRegion> regions, const IommuInfo& info,
                         PlanPolicy policy, uint64_t available) {
  const uint64_t min_page = info.min_page();
  if (min_page == 0 || info.ranges.empty()) return Errc::kInvalidArgument;
  std::vector<DmaRegion> sorted(regions.begin(), regions.end());
  for (const DmaRegion& r : sorted) {
    if (r.size == 0) return Errc::kInvalidArgument;
    uint64_t end;
    // Ends must be representable: [addr, addr + size) below 2^64.
    if (__builtin_add_overflow(r.vaddr, r.size, &end) ||
        __builtin_add_overflow(r.iova, r.size, &end))
      return Errc::kRegionAddressOverflow;
    if (((r.vaddr | r.iova | r.size) & (min_page - 1)) != 0) return Errc::kDmaMisaligned;
    if (r.page_size == 0 || (r.page_size & (r.page_size - 1)) != 0) return Errc::kInvalidArgument;
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const DmaRegion& a, const DmaRegion& b) { return a.iova < b.iova; });
  // Runs of regions contiguous in both address spaces (kMinimal merges them).
  struct Run {
    uint64_t vaddr, iova, size, page;
  };
  std::vector<Run> runs;
  for (const DmaRegion& r : sorted) {
    if (!runs.empty()) {
      Run& last = runs.back();
      if (r.iova - last.iova < last.size) return Errc::kDmaOverlap;
      if (policy == PlanPolicy::kMinimal && last.iova + last.size == r.iova &&
          last.vaddr + last.size == r.vaddr) {
        last.size += r.size;
        continue;
      }
    }
    uint64_t page = policy == PlanPolicy::kPerPage ? min_page : std::max(r.page_size, min_page);
    runs.push_back(Run{r.vaddr, r.iova, r.size, page});
  }

  DmaPlan plan;
  for (const Run& run : runs) {
    const uint64_t run_last = run.iova + (run.size - 1);
    if (run.iova < info.ranges.front().start || run_last > info.ranges.back().last)
      return Errc::kDmaOutsideIovaRanges;
    uint64_t covered = 0;
    for (const IovaRange& range : info.ranges) {
      if (range.last < run.iova || range.start > run_last) continue;
      // The part of the run inside this range, shrunk to whole IOMMU pages
      // (the kernel's ranges are page-aligned; a hostile report need not be).
      uint64_t lo = std::max(range.start, run.iova);
      uint64_t hi = std::min(range.last, run_last);  // inclusive
      lo = (lo + min_page - 1) & ~(min_page - 1);
      uint64_t hi_end = (hi + 1) & ~(min_page - 1);  // hi < run end < 2^64
      if (hi_end <= lo) continue;
      emit(plan, run.vaddr + (lo - run.iova), lo, hi_end - lo, policy, run.page);
      covered += hi_end - lo;
    }
    plan.skipped += run.size - covered;
  }
  if (plan.calls.size() > available) return Errc::kDmaLimit;
  return plan;
}

}  // namespace sluice::vfio
