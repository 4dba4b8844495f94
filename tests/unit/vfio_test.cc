// vfio/: capability parsing, the planner, the executor with its reference
// counts and rollback, the guest-memory listener and the device, against the
// fake kernel (tests/support/fake_vfio), which enforces type1's rules.
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "dataplane/memory/guest_memory.h"
#include "tests/support/fake_vfio.h"
#include "tests/support/mock_guest.h"
#include "vfio/container.h"
#include "vfio/device.h"
#include "vfio/dma_mapper.h"
#include "vfio/dma_plan.h"
#include "vfio/info.h"

namespace sluice {
namespace {

using namespace vfio;
using test::FakeVfio;
using test::FakeVfioConfig;

constexpr uint64_t k4K = 4096, k2M = 2u << 20, k1G = 1u << 30;

// Anonymous address space to map from: reserved, never touched (the fake
// only checks that it is mapped).
struct Arena {
  explicit Arena(size_t bytes) : len(bytes) {
    p = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
  }
  ~Arena() { ::munmap(p, len); }
  // Aligned to `align` inside the arena.
  uint64_t at(uint64_t off, uint64_t align = k2M) const {
    uint64_t base = (reinterpret_cast<uint64_t>(p) + align - 1) & ~(align - 1);
    return base + off;
  }
  void* p;
  size_t len;
};

// A fake with group 7 holding one device, and a container it is attached to.
struct Rig {
  explicit Rig(FakeVfioConfig cfg = {}) : k(std::move(cfg)) {
    k.add_group(7);
    k.add_device(7, "0000:00:05.0");
    auto c = Container::open(k);
    EXPECT_TRUE(c.ok());
    container = std::move(c.value());
    auto g = Group::open(7, k);
    EXPECT_TRUE(g.ok());
    group = std::move(g.value());
    EXPECT_TRUE(group->attach(*container).ok());
  }
  const std::map<uint64_t, test::FakeMapping>& maps() const { return k.mappings(container->fd()); }
  FakeVfio k;
  std::unique_ptr<Container> container;
  std::unique_ptr<Group> group;
};

IommuInfo vtd_info(uint32_t avail = 65535) {
  IommuInfo i;
  i.iova_pgsizes = 0x40201000;
  i.ranges = {{0, 0xfedfffff}, {0xfef00000, (uint64_t{1} << 39) - 1}};
  i.dma_avail = avail;
  return i;
}

// ---------------------------------------------------------------- info parsing

TEST(VfioInfo, ContainerReadsCapabilitiesThroughTheArgszDance) {
  Rig r;
  const IommuInfo& i = r.container->info();
  EXPECT_EQ(r.container->iommu_type(), uint32_t{VFIO_TYPE1v2_IOMMU});
  EXPECT_EQ(i.iova_pgsizes, 0x40201000u);
  EXPECT_EQ(i.min_page(), k4K);
  ASSERT_EQ(i.ranges.size(), 2u);
  EXPECT_EQ(i.ranges[0], (IovaRange{0, 0xfedfffff}));
  EXPECT_EQ(i.ranges[1].start, 0xfef00000u);
  ASSERT_TRUE(i.dma_avail.has_value());
  EXPECT_EQ(*i.dma_avail, 65535u);
  ASSERT_TRUE(i.migration.has_value());
  EXPECT_TRUE(r.container->has_unmap_all());
}

TEST(VfioInfo, NoCapabilitiesMeansWholeSpaceAndNoLimit) {
  FakeVfioConfig cfg;
  cfg.report_caps = false;
  Rig r(cfg);
  EXPECT_EQ(r.container->info().ranges, (std::vector<IovaRange>{{0, UINT64_MAX}}));
  EXPECT_FALSE(r.container->info().dma_avail.has_value());
}

TEST(VfioInfo, DmaAvailIsCurrent) {
  Rig r;
  Arena a(8 * k2M);
  ASSERT_TRUE(r.container->map_dma(a.at(0), 0x100000, k4K).ok());
  auto i = r.container->query_info();
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(*i->dma_avail, 65534u);
}

// Corrupts the GET_INFO answer and expects a refusal, never a crash.
void expect_malformed(std::function<void(std::vector<std::byte>&)> hook, int line) {
  SCOPED_TRACE(line);
  FakeVfio k;
  k.add_group(7);
  k.info_hook = std::move(hook);
  auto c = Container::open(k);
  ASSERT_TRUE(c.ok());
  auto g = Group::open(7, k);
  ASSERT_TRUE(g.ok());
  Status s = g.value()->attach(*c.value());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error(), Errc::kVfioInfoMalformed);
  EXPECT_FALSE(c.value()->ready());
}

template <class T>
void poke(std::vector<std::byte>& b, size_t off, T v) {
  if (off + sizeof v <= b.size()) std::memcpy(b.data() + off, &v, sizeof v);
}
constexpr size_t kFirstCap = sizeof(vfio_iommu_type1_info);

TEST(VfioInfo, MalformedChainsAreRefused) {
  // First capability offset past the end of the buffer.
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap) poke<uint32_t>(b, offsetof(vfio_iommu_type1_info, cap_offset), 1u << 20);
  }, __LINE__);
  // A capability pointing at itself (a loop).
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap) poke<uint32_t>(b, kFirstCap + offsetof(vfio_info_cap_header, next), kFirstCap);
  }, __LINE__);
  // A capability pointing backwards, into the fixed header.
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap) poke<uint32_t>(b, kFirstCap + offsetof(vfio_info_cap_header, next), 8);
  }, __LINE__);
  // More IOVA ranges than the capability holds.
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap)
      poke<uint32_t>(b, kFirstCap + offsetof(vfio_iommu_type1_info_cap_iova_range, nr_iovas), 1000000);
  }, __LINE__);
  // Ranges out of order.
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap)
      poke<uint64_t>(b, kFirstCap + sizeof(vfio_iommu_type1_info_cap_iova_range) + 16, 0);
  }, __LINE__);
  // A range with start after end.
  expect_malformed([](auto& b) {
    if (b.size() > kFirstCap)
      poke<uint64_t>(b, kFirstCap + sizeof(vfio_iommu_type1_info_cap_iova_range), 0xffffffff);
  }, __LINE__);
  // No page sizes.
  expect_malformed([](auto& b) { poke<uint64_t>(b, offsetof(vfio_iommu_type1_info, iova_pgsizes), 0); }, __LINE__);
  // argsz shorter than the fixed fields.
  expect_malformed([](auto& b) { poke<uint32_t>(b, 0, 4); }, __LINE__);
  // argsz that keeps growing: given up after a few rounds.
  expect_malformed(
      [n = 0u](auto& b) mutable { poke<uint32_t>(b, 0, static_cast<uint32_t>(b.size() + 64 * ++n)); },
      __LINE__);
}

TEST(VfioInfo, ParserBoundsEveryField) {
  std::vector<std::byte> tiny(8);
  EXPECT_EQ(parse_iommu_info(tiny).error(), Errc::kVfioInfoMalformed);
  // A duplicate DMA_AVAIL capability.
  std::vector<std::byte> b(kFirstCap + 2 * sizeof(vfio_iommu_type1_info_dma_avail));
  vfio_iommu_type1_info head{};
  head.argsz = static_cast<uint32_t>(b.size());
  head.flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS;
  head.iova_pgsizes = k4K;
  head.cap_offset = kFirstCap;
  std::memcpy(b.data(), &head, sizeof head);
  vfio_iommu_type1_info_dma_avail av{};
  av.header.id = VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL;
  av.header.next = static_cast<uint32_t>(kFirstCap + sizeof av);
  av.avail = 5;
  std::memcpy(b.data() + kFirstCap, &av, sizeof av);
  av.header.next = 0;
  std::memcpy(b.data() + kFirstCap + sizeof av, &av, sizeof av);
  EXPECT_EQ(parse_iommu_info(b).error(), Errc::kVfioInfoMalformed);
  // The same with one of them unknown: skipped, accepted.
  uint16_t unknown = 99;
  std::memcpy(b.data() + kFirstCap, &unknown, sizeof unknown);
  auto ok = parse_iommu_info(b);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok->dma_avail, 5u);
}

// ---------------------------------------------------------------- containers

TEST(VfioContainer, GroupRules) {
  FakeVfio k;
  k.add_group(3, /*viable=*/false);
  k.add_group(4);
  EXPECT_EQ(Group::open(3, k).error(), Errc::kVfioGroupNotViable);
  EXPECT_EQ(Group::open(9, k).error().sys_errno, ENOENT);
  auto g = Group::open(4, k);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(Group::open(4, k).error().sys_errno, EBUSY);  // one open per group
  // No device before the group is in a container with an IOMMU.
  EXPECT_FALSE(g.value()->open_device("0000:00:05.0").ok());
  auto c = Container::open(k);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c.value()->ready());
  EXPECT_FALSE(c.value()->map_dma(0, 0, k4K).ok());  // no IOMMU yet
  ASSERT_TRUE(g.value()->attach(*c.value()).ok());
  EXPECT_TRUE(c.value()->ready());
  EXPECT_EQ(g.value()->open_device("0000:00:09.0").error().sys_errno, ENODEV);
}

TEST(VfioContainer, Type1FallbackWhenV2IsMissing) {
  FakeVfioConfig cfg;
  cfg.type1v2 = false;
  Rig r(cfg);
  EXPECT_EQ(r.container->iommu_type(), uint32_t{VFIO_TYPE1_IOMMU});
}

TEST(VfioContainer, FakeKernelEnforcesType1Rules) {
  Rig r;
  Arena a(16 * k2M);
  Container& c = *r.container;
  EXPECT_EQ(c.map_dma(a.at(0) + 512, 0x100000, k4K).error().sys_errno, EINVAL);  // vaddr
  EXPECT_EQ(c.map_dma(a.at(0), 0x100800, k4K).error().sys_errno, EINVAL);        // iova
  EXPECT_EQ(c.map_dma(a.at(0), 0x100000, 100).error().sys_errno, EINVAL);        // size
  EXPECT_EQ(c.map_dma(a.at(0), 0xfee00000, k4K).error().sys_errno, EINVAL);      // hole
  EXPECT_EQ(c.map_dma(a.at(0), 0xfed00000, k2M).error().sys_errno, EINVAL);      // into the hole
  EXPECT_EQ(c.map_dma(0x1000, 0x100000, k4K).error().sys_errno, EFAULT);         // no memory
  ASSERT_TRUE(c.map_dma(a.at(0), 0x200000, k2M).ok());
  EXPECT_EQ(c.map_dma(a.at(k2M), 0x300000, k2M).error().sys_errno, EEXIST);
  // TYPE1v2: an unmap may not split a mapping.
  EXPECT_EQ(c.unmap_dma(0x200000, k4K).error().sys_errno, EINVAL);
  EXPECT_EQ(c.unmap_dma(0x100000, k2M).error().sys_errno, EINVAL);
  auto n = c.unmap_dma(0x200000, k2M);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n.value(), k2M);
  EXPECT_TRUE(r.maps().empty());
}

// ---------------------------------------------------------------- planner

TEST(DmaPlan, MergesFoliosContiguousInBothSpaces) {
  // Three 2 MiB hugetlbfs regions back to back: one call.
  std::vector<DmaRegion> regs;
  for (uint64_t i = 0; i < 3; ++i)
    regs.push_back(DmaRegion{0x7f0000000000 + i * k2M, 0x40000000 + i * k2M, k2M, k2M});
  auto p = plan_dma(regs, vtd_info(), PlanPolicy::kMinimal, 65535);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->calls.size(), 1u);
  EXPECT_EQ(p->calls[0], (MapCall{0x7f0000000000, 0x40000000, 3 * k2M}));
  // Given out of order: the same plan.
  std::swap(regs[0], regs[2]);
  auto q = plan_dma(regs, vtd_info(), PlanPolicy::kMinimal, 65535);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->calls, p->calls);
}

TEST(DmaPlan, NoMergeWhenOnlyOneSpaceIsContiguous) {
  std::vector<DmaRegion> regs = {{0x7f0000000000, 0x40000000, k2M, k2M},
                                 {0x7f0000800000, 0x40200000, k2M, k2M}};  // vaddr gap
  auto p = plan_dma(regs, vtd_info(), PlanPolicy::kMinimal, 65535);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->calls.size(), 2u);
}

TEST(DmaPlan, SplitsOnlyAtTheMsiHole) {
  // 16 MiB across 0xfee00000-0xfeefffff.
  DmaRegion r{0x7f0000000000, 0xfe000000, 16u << 20, k2M};
  auto p = plan_dma(std::span(&r, 1), vtd_info(), PlanPolicy::kMinimal, 65535);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->calls.size(), 2u);
  EXPECT_EQ(p->calls[0], (MapCall{0x7f0000000000, 0xfe000000, 0xe00000}));
  EXPECT_EQ(p->calls[1], (MapCall{0x7f0000f00000, 0xfef00000, 0x100000}));
  EXPECT_EQ(p->skipped, 0x100000u);
  EXPECT_EQ(p->bytes + p->skipped, r.size);
}

TEST(DmaPlan, NamedRefusals) {
  IommuInfo i = vtd_info();
  DmaRegion above{0x7f0000000000, uint64_t{1} << 39, k2M, k2M};
  EXPECT_EQ(plan_dma(std::span(&above, 1), i, PlanPolicy::kMinimal, 10).error(),
            Errc::kDmaOutsideIovaRanges);
  DmaRegion mis{0x7f0000000800, 0x100000, k4K, k4K};
  EXPECT_EQ(plan_dma(std::span(&mis, 1), i, PlanPolicy::kMinimal, 10).error(), Errc::kDmaMisaligned);
  DmaRegion zero{0x7f0000000000, 0x100000, 0, k4K};
  EXPECT_EQ(plan_dma(std::span(&zero, 1), i, PlanPolicy::kMinimal, 10).error(), Errc::kInvalidArgument);
  DmaRegion wrap{0x7f0000000000, UINT64_MAX - k4K + 1, k4K, k4K};
  EXPECT_EQ(plan_dma(std::span(&wrap, 1), i, PlanPolicy::kMinimal, 10).error(),
            Errc::kRegionAddressOverflow);
  std::vector<DmaRegion> overlap = {{0x7f0000000000, 0x100000, k2M, k4K},
                                    {0x7f0010000000, 0x200000, k2M, k4K}};
  EXPECT_EQ(plan_dma(overlap, i, PlanPolicy::kMinimal, 10).error(), Errc::kDmaOverlap);
  // DMA_AVAIL: refused before the kernel is touched.
  DmaRegion hole{0x7f0000000000, 0xfe000000, 16u << 20, k2M};
  EXPECT_EQ(plan_dma(std::span(&hole, 1), i, PlanPolicy::kMinimal, 1).error(), Errc::kDmaLimit);
}

TEST(DmaPlan, BaselinePoliciesCountPagesAndFolios) {
  DmaRegion r{0x7f0000000000, 0x40000000, 8u << 20, k2M};
  auto folio = plan_dma(std::span(&r, 1), vtd_info(), PlanPolicy::kPerFolio, 65535);
  auto page = plan_dma(std::span(&r, 1), vtd_info(), PlanPolicy::kPerPage, 65535);
  ASSERT_TRUE(folio.ok());
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(folio->calls.size(), 4u);
  EXPECT_EQ(page->calls.size(), 2048u);
  for (const MapCall& c : folio->calls) EXPECT_EQ(c.vaddr % k2M, 0u);
  // 1 GiB of 4 KiB pages per page: 262144 calls, more than DMA_AVAIL.
  DmaRegion big{0x7f0000000000, 0x40000000, k1G, k4K};
  EXPECT_EQ(plan_dma(std::span(&big, 1), vtd_info(), PlanPolicy::kPerPage, 65535).error(),
            Errc::kDmaLimit);
}

// The bound, on random region sets: never more calls than runs of
// contiguous regions plus one per IOVA hole a run crosses.
TEST(DmaPlan, NeverMoreCallsThanRunsPlusHoles) {
  std::mt19937_64 rng(42);
  IommuInfo info = vtd_info();
  for (int round = 0; round < 200; ++round) {
    std::vector<DmaRegion> regs;
    uint64_t iova = 0xf0000000, vaddr = 0x7f0000000000;
    int n = 1 + static_cast<int>(rng() % 12);
    uint64_t breaks = 0;
    for (int i = 0; i < n; ++i) {
      uint64_t size = (1 + rng() % 8) * k2M;
      regs.push_back(DmaRegion{vaddr, iova, size, k2M});
      bool gap = rng() % 3 == 0;
      breaks += gap && i + 1 < n;
      iova += size + (gap ? k2M : 0);
      vaddr += size;
    }
    auto p = plan_dma(regs, info, PlanPolicy::kMinimal, 65535);
    ASSERT_TRUE(p.ok());
    uint64_t runs = breaks + 1;
    uint64_t holes = 0;  // the MSI hole lies inside the span: at most once per run
    for (const DmaRegion& r : regs)
      holes += r.iova <= 0xfee00000 && r.iova + r.size > 0xfef00000;
    EXPECT_LE(p->calls.size(), runs + holes) << "round " << round;
    uint64_t total = 0;
    for (const DmaRegion& r : regs) total += r.size;
    EXPECT_EQ(p->bytes + p->skipped, total);
  }
}

// ---------------------------------------------------------------- executor

TEST(DmaMapper, MapsThePlanAndCountsReferences) {
  Rig r;
  Arena a(64 * k2M);
  DmaMapper m(*r.container);
  DmaRegion x{a.at(0), 0x40000000, 4 * k2M, k2M};
  ASSERT_TRUE(m.map(std::span(&x, 1)).ok());
  ASSERT_TRUE(m.map(std::span(&x, 1)).ok());  // shared: one mapping, two references
  EXPECT_EQ(r.maps().size(), 1u);
  EXPECT_EQ(m.refs(x), 2u);
  EXPECT_EQ(r.k.map_calls, 1u);
  ASSERT_TRUE(m.unmap(std::span(&x, 1)).ok());
  EXPECT_EQ(r.maps().size(), 1u);  // still referenced
  EXPECT_TRUE(m.is_mapped(0x40000000, 4 * k2M));
  ASSERT_TRUE(m.unmap(std::span(&x, 1)).ok());
  EXPECT_TRUE(r.maps().empty());
  EXPECT_FALSE(m.is_mapped(0x40000000, 1));
  EXPECT_EQ(m.unmap(std::span(&x, 1)).error(), Errc::kDmaNotMapped);
}

TEST(DmaMapper, RefusesPartialOverlapsAndUnknownUnmaps) {
  Rig r;
  Arena a(64 * k2M);
  DmaMapper m(*r.container);
  DmaRegion x{a.at(0), 0x40000000, 4 * k2M, k2M};
  ASSERT_TRUE(m.map(std::span(&x, 1)).ok());
  DmaRegion y{a.at(k2M), 0x40200000, k2M, k2M};  // inside x, not x
  EXPECT_EQ(m.map(std::span(&y, 1)).error(), Errc::kDmaOverlap);
  EXPECT_EQ(m.unmap(std::span(&y, 1)).error(), Errc::kDmaNotMapped);
  DmaRegion twice[] = {x, x, x};  // more drops than references: nothing changes
  EXPECT_EQ(m.unmap(twice).error(), Errc::kDmaNotMapped);
  EXPECT_EQ(m.refs(x), 1u);
  EXPECT_EQ(r.maps().size(), 1u);
}

TEST(DmaMapper, IovaHoleStaysUnmapped) {
  Rig r;
  Arena a(16 * k2M);
  DmaMapper m(*r.container);
  DmaRegion x{a.at(0), 0xfe000000, 16u << 20, k2M};
  ASSERT_TRUE(m.map(std::span(&x, 1)).ok());
  EXPECT_EQ(r.maps().size(), 2u);
  EXPECT_TRUE(m.is_mapped(0xfe000000, 0xe00000));
  EXPECT_FALSE(m.is_mapped(0xfee00000, k4K));
  EXPECT_TRUE(m.is_mapped(0xfef00000, 0x100000));
  EXPECT_FALSE(m.is_mapped(0xfef00000, 0x101000));
  ASSERT_TRUE(m.unmap(std::span(&x, 1)).ok());
  EXPECT_TRUE(r.maps().empty());
}

TEST(DmaMapper, RollsBackWhenTheKernelFailsHalfWay) {
  Rig r;
  Arena a(16 * k2M);
  DmaMapper m(*r.container, PlanPolicy::kPerFolio);
  DmaRegion x{a.at(0), 0x40000000, 4 * k2M, k2M};  // four calls
  r.k.fail_map_at = 2;                              // the third fails
  r.k.fail_map_errno = ENOMEM;
  Status s = m.map(std::span(&x, 1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().sys_errno, ENOMEM);
  EXPECT_TRUE(r.maps().empty());
  EXPECT_EQ(m.stats().rollbacks, 1u);
  EXPECT_EQ(m.stats().unmap_calls, 2u);
  EXPECT_EQ(m.regions(), 0u);
  // And it works once the kernel does.
  ASSERT_TRUE(m.map(std::span(&x, 1)).ok());
  EXPECT_EQ(r.maps().size(), 4u);
}

TEST(DmaMapper, UnmapKeepsMapGranularityAndRemapsSurvivors) {
  Rig r;
  Arena a(16 * k2M);
  DmaMapper m(*r.container);
  DmaRegion two[] = {{a.at(0), 0x40000000, k2M, k2M}, {a.at(k2M), 0x40200000, k2M, k2M}};
  ASSERT_TRUE(m.map(two).ok());
  ASSERT_EQ(r.maps().size(), 1u);  // merged into one kernel mapping
  // Dropping the first: the merged mapping goes whole (TYPE1v2 cannot split
  // it) and the second is mapped again on its own.
  ASSERT_TRUE(m.unmap(std::span(&two[0], 1)).ok());
  ASSERT_EQ(r.maps().size(), 1u);
  EXPECT_EQ(r.maps().begin()->second.iova, 0x40200000u);
  EXPECT_EQ(r.maps().begin()->second.size, k2M);
  EXPECT_EQ(r.maps().begin()->second.vaddr, a.at(k2M));
}

TEST(DmaMapper, EnospcAfter65535Mappings) {
  Rig r;
  // 65,535 single pages whose user addresses are not contiguous, so none merge.
  Arena a(uint64_t{65536} * 2 * k4K + k2M);
  DmaMapper m(*r.container);
  std::vector<DmaRegion> regs;
  for (uint64_t i = 0; i < 65535; ++i)
    regs.push_back(DmaRegion{a.at(i * 2 * k4K), 0x100000000 + i * k4K, k4K, k4K});
  ASSERT_TRUE(m.map(regs).ok());
  EXPECT_EQ(r.maps().size(), 65535u);
  EXPECT_EQ(m.kernel_mappings(), 65535u);
  // The planner refuses the 65,536th before the kernel sees it...
  uint64_t calls = r.k.map_calls;
  DmaRegion one{a.at(65535 * 2 * k4K), 0x200000000, k4K, k4K};
  EXPECT_EQ(m.map(std::span(&one, 1)).error(), Errc::kDmaLimit);
  EXPECT_EQ(r.k.map_calls, calls);
  // ...and the kernel (the fake, as Linux) answers ENOSPC if asked anyway.
  EXPECT_EQ(r.container->map_dma(one.vaddr, one.iova, k4K).error().sys_errno, ENOSPC);
  // Teardown in one call.
  uint64_t unmaps = r.k.unmap_calls;
  ASSERT_TRUE(m.unmap_all().ok());
  EXPECT_EQ(r.k.unmap_calls, unmaps + 1);
  EXPECT_TRUE(r.maps().empty());
}

TEST(DmaMapper, TeardownWithoutUnmapAllUnmapsEachMapping) {
  FakeVfioConfig cfg;
  cfg.unmap_all = false;
  Rig r(cfg);
  Arena a(16 * k2M);
  {
    DmaMapper m(*r.container);
    DmaRegion two[] = {{a.at(0), 0x40000000, k2M, k2M}, {a.at(4 * k2M), 0x80000000, k2M, k2M}};
    ASSERT_TRUE(m.map(two).ok());
    EXPECT_EQ(r.maps().size(), 2u);
  }  // destructor
  EXPECT_TRUE(r.maps().empty());
  EXPECT_EQ(r.k.unmap_calls, 2u);
}

// ---------------------------------------------------------------- listener

TEST(GuestMemoryDma, FollowsVhostMemoryChangesOnEveryContainer) {
  Rig r1;
  FakeVfio k2;  // a second container on another fake kernel
  k2.add_group(1);
  auto c2 = Container::open(k2);
  ASSERT_TRUE(c2.ok());
  auto g2 = Group::open(1, k2);
  ASSERT_TRUE(g2.ok());
  ASSERT_TRUE(g2.value()->attach(*c2.value()).ok());

  test::MockGuest guest({{0x100000, 2u << 20}});
  DmaMapper m1(*r1.container), m2(*c2.value());
  GuestMemoryDma bridge;
  ASSERT_TRUE(bridge.attach(&m1, *guest.table()).ok());
  ASSERT_TRUE(bridge.attach(&m2, *guest.table()).ok());
  guest.memory().add_listener(&bridge);
  // What the guest had is mapped at IOVA = guest physical, from our mapping.
  ASSERT_EQ(r1.maps().size(), 1u);
  EXPECT_EQ(r1.maps().begin()->second.iova, 0x100000u);
  EXPECT_EQ(r1.maps().begin()->second.vaddr, reinterpret_cast<uint64_t>(guest.host(0x100000)));

  // ADD_MEM_REG: mapped on both containers by the time the call returns.
  RegionSpec spec;
  spec.guest_phys = 0x10000000;
  spec.size = 4u << 20;
  spec.user_addr = 0x7000000000;
  spec.fd = test::make_memfd(spec.size);
  ASSERT_TRUE(guest.memory().add_region(std::move(spec)).ok());
  EXPECT_EQ(r1.maps().size(), 2u);
  EXPECT_EQ(k2.mappings(c2.value()->fd()).size(), 2u);
  const GuestRegion* added = guest.table()->find(0x10000000);
  ASSERT_NE(added, nullptr);
  EXPECT_EQ(r1.maps().at(0x10000000).vaddr, reinterpret_cast<uint64_t>(added->host));

  // REM_MEM_REG: unmapped on both.
  ASSERT_TRUE(guest.memory().remove_region(0x10000000, 4u << 20, 0x7000000000).ok());
  EXPECT_EQ(r1.maps().size(), 1u);
  EXPECT_EQ(k2.mappings(c2.value()->fd()).size(), 1u);

  // A region the IOMMU cannot reach: the change is reported as failed.
  RegionSpec far;
  far.guest_phys = uint64_t{1} << 40;
  far.size = 2u << 20;
  far.user_addr = 0x7100000000;
  far.fd = test::make_memfd(far.size);
  Status s = guest.memory().add_region(std::move(far));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error(), Errc::kDmaOutsideIovaRanges);
  guest.memory().remove_listener(&bridge);
}

// Two vhost-user sessions of one VM map the VM's memory fds separately (two
// host addresses, one set of pages): one IOMMU mapping, two references. A
// different VM's memory at the same guest address is refused.
TEST(GuestMemoryDma, SessionsOfOneVmShareMappingsOtherVmsAreRefused) {
  Rig r;
  DmaMapper m(*r.container);
  UniqueFd vm = test::make_memfd(4u << 20);
  auto spec_of = [](int fd) {
    RegionSpec s;
    s.guest_phys = 0x40000000;
    s.size = 4u << 20;
    s.user_addr = 0x7f0000000000;
    s.fd = UniqueFd(::dup(fd));
    return s;
  };
  GuestMemory a, b;
  GuestMemoryDma ba, bb;
  ASSERT_TRUE(ba.attach(&m, *a.snapshot()).ok());
  ASSERT_TRUE(bb.attach(&m, *b.snapshot()).ok());
  a.add_listener(&ba);
  b.add_listener(&bb);
  std::vector<RegionSpec> sa, sb;
  sa.push_back(spec_of(vm.get()));
  sb.push_back(spec_of(vm.get()));
  ASSERT_TRUE(a.set_regions(std::move(sa)).ok());
  ASSERT_TRUE(b.set_regions(std::move(sb)).ok());
  EXPECT_NE(a.snapshot()->regions()[0].host, b.snapshot()->regions()[0].host);
  EXPECT_EQ(r.maps().size(), 1u);
  EXPECT_EQ(m.refs(GuestMemoryDma::region_of(a.snapshot()->regions()[0])), 2u);

  // Another VM: its own memfd at the same guest address.
  UniqueFd other = test::make_memfd(4u << 20);
  GuestMemory c;
  GuestMemoryDma bc;
  ASSERT_TRUE(bc.attach(&m, *c.snapshot()).ok());
  c.add_listener(&bc);
  std::vector<RegionSpec> sc;
  sc.push_back(spec_of(other.get()));
  Status s = c.set_regions(std::move(sc));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error(), Errc::kDmaOverlap);
  c.remove_listener(&bc);

  // Session a ends without a reset: its reference goes, the mapping stays.
  a.remove_listener(&ba);
  ba.release(*a.snapshot());
  EXPECT_EQ(r.maps().size(), 1u);
  // Session b resets its memory: the last reference goes.
  b.clear();
  EXPECT_TRUE(r.maps().empty());
  b.remove_listener(&bb);
}

// ---------------------------------------------------------------- device

TEST(VfioDevice, RegionsConfigInterruptsReset) {
  Rig r;
  auto dev = r.group->open_device("0000:00:05.0");
  ASSERT_TRUE(dev.ok());
  Device& d = *dev.value();
  EXPECT_TRUE(d.is_pci());
  EXPECT_EQ(d.region(VFIO_PCI_NUM_REGIONS).error(), Errc::kVfioRegionBad);
  auto bar = d.map_region(VFIO_PCI_BAR0_REGION_INDEX);
  ASSERT_TRUE(bar.ok());
  bar->write32(0x10, 0xdeadbeef);
  EXPECT_EQ(bar->read32(0x10), 0xdeadbeefu);
  EXPECT_EQ(bar->read32(4096), UINT32_MAX);  // past the end: all ones, no access
  EXPECT_EQ(bar->read32(3), UINT32_MAX);     // unaligned
  EXPECT_FALSE(d.map_region(VFIO_PCI_CONFIG_REGION_INDEX).ok());  // not mmap-able

  auto vendor = d.config_read16(PCI_VENDOR_ID);
  ASSERT_TRUE(vendor.ok());
  EXPECT_EQ(vendor.value(), 0x1234);
  ASSERT_TRUE(d.enable_bus_master().ok());
  EXPECT_EQ(d.config_read16(PCI_COMMAND).value() & (PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY),
            PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
  EXPECT_FALSE(d.config_read16(300).ok());  // past config space

  auto msix = d.irq(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_TRUE(msix.ok());
  EXPECT_EQ(msix->count, 8u);
  int efd[3];
  for (int& e : efd) e = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_TRUE(d.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, efd).ok());
  ASSERT_TRUE(r.k.trigger("0000:00:05.0", VFIO_PCI_MSIX_IRQ_INDEX, 1));
  uint64_t v = 0;
  ASSERT_EQ(::read(efd[1], &v, sizeof v), static_cast<ssize_t>(sizeof v));  // vector 1 fired
  EXPECT_EQ(v, 1u);
  EXPECT_EQ(::read(efd[0], &v, sizeof v), -1);  // vector 0 did not
  int more[2] = {efd[0], efd[1]};
  EXPECT_EQ(d.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 7, more).error(), Errc::kVfioIrqBad);
  EXPECT_EQ(d.set_irq_eventfds(9, 0, more).error(), Errc::kVfioIrqBad);
  ASSERT_TRUE(d.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX).ok());
  EXPECT_FALSE(r.k.trigger("0000:00:05.0", VFIO_PCI_MSIX_IRQ_INDEX, 1));
  ASSERT_TRUE(d.reset().ok());
  for (int e : efd) ::close(e);
}

TEST(VfioDevice, ClosingReleasesEverything) {
  Rig r;
  size_t before = r.k.open_fds();
  {
    auto dev = r.group->open_device("0000:00:05.0");
    ASSERT_TRUE(dev.ok());
    EXPECT_EQ(r.group->open_device("0000:00:05.0").error().sys_errno, EBUSY);
    EXPECT_EQ(r.k.open_fds(), before + 1);
  }
  EXPECT_EQ(r.k.open_fds(), before);
  r.group.reset();
  r.container.reset();
  EXPECT_EQ(r.k.open_fds(), 0u);
}

}  // namespace
}  // namespace sluice
