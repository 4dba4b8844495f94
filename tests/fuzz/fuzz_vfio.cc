// libFuzzer target: VFIO_IOMMU_GET_INFO bytes and the DMA planner.
// Input: u16 n, then n bytes of GET_INFO answer (what a kernel, or something
// pretending to be one, wrote), then regions of 4 x u64 (vaddr, iova, size,
// page shift in the low bits of the fourth). The parser must never read
// outside the buffer; whatever it accepts, every plan must obey the rules:
// calls aligned to the smallest page, inside one usable range, disjoint, no
// more than allowed, and bytes + skipped == the regions' total.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vfio/dma_plan.h"
#include "vfio/info.h"

using namespace sluice;
using namespace sluice::vfio;

namespace {
[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "invariant broken: %s\n", what);
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  size_t n = data[0] | (size_t{data[1]} << 8);
  data += 2;
  size -= 2;
  if (n > size) n = size;
  // A copy of exactly n bytes, so ASan sees any read past it.
  std::vector<std::byte> info_bytes(n);
  if (n != 0) std::memcpy(info_bytes.data(), data, n);
  auto info = parse_iommu_info(info_bytes);
  if (!info.ok()) return 0;
  const IommuInfo& in = info.value();
  for (size_t i = 0; i < in.ranges.size(); ++i) {
    if (in.ranges[i].start > in.ranges[i].last) die("range start > last");
    if (i > 0 && in.ranges[i].start <= in.ranges[i - 1].last) die("ranges not sorted/disjoint");
  }
  data += n;
  size -= n;
  std::vector<DmaRegion> regs;
  uint64_t total = 0;
  while (size >= 32 && regs.size() < 64) {
    uint64_t v[4];
    std::memcpy(v, data, sizeof v);
    data += 32;
    size -= 32;
    regs.push_back(DmaRegion{v[0], v[1], v[2], uint64_t{1} << (v[3] % 40)});
  }
  if (regs.empty()) return 0;
  for (auto policy : {PlanPolicy::kMinimal, PlanPolicy::kPerFolio}) {
    uint64_t avail = in.dma_avail ? *in.dma_avail : 4096;
    if (avail > 4096) avail = 4096;  // keep per-folio plans small
    // Skip inputs that would make per-folio plans enormous before the limit.
    if (policy == PlanPolicy::kPerFolio) {
      uint64_t pieces = 0;
      for (const DmaRegion& r : regs) pieces += r.size / (r.page_size ? r.page_size : 1);
      if (pieces > (1u << 16)) continue;
    }
    auto plan = plan_dma(regs, in, policy, avail);
    if (!plan.ok()) continue;
    total = 0;
    for (const DmaRegion& r : regs) total += r.size;
    if (plan->bytes + plan->skipped != total) die("bytes + skipped != total");
    if (plan->calls.size() > avail) die("more calls than allowed");
    const uint64_t pg = in.min_page();
    for (size_t i = 0; i < plan->calls.size(); ++i) {
      const MapCall& c = plan->calls[i];
      if (c.size == 0 || ((c.vaddr | c.iova | c.size) & (pg - 1)) != 0) die("misaligned call");
      uint64_t last = c.iova + (c.size - 1);
      if (last < c.iova) die("call wraps");
      bool inside = false;
      for (const IovaRange& r : in.ranges) inside |= r.start <= c.iova && last <= r.last;
      if (!inside) die("call outside the usable ranges");
      if (i > 0 && c.iova <= plan->calls[i - 1].iova + (plan->calls[i - 1].size - 1))
        die("calls overlap or are unsorted");
    }
  }
  return 0;
}
