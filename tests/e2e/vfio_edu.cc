// sluice-vfio-edu: runs inside a test guest (TCG, emulated VT-d) against
// QEMU's `edu` device bound to vfio-pci, through Sluice's vfio/ library:
// container + group + device, IOMMU info, hugetlbfs memory mapped through the
// DMA mapper (planner + executor), edu's DMA engine driven through the
// mmapped BAR (RAM -> device -> RAM, pattern verified), a DMA to an IOVA that
// was unmapped must not land, and edu's MSI arrives on our eventfd.
// Prints "EDU-OK <check>" / "EDU-FAIL <check>" lines and "EDU-DONE fails=N".
//
// Usage: sluice-vfio-edu PCI_ADDR HUGETLBFS_DIR
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "vfio/container.h"
#include "vfio/device.h"
#include "vfio/dma_mapper.h"

using namespace sluice;
using namespace sluice::vfio;

namespace {

int fails = 0;
void check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "EDU-OK" : "EDU-FAIL", what);
  std::fflush(stdout);
  fails += !ok;
}

std::string err(const Error& e) {
  return std::string(e.name()) + (e.sys_errno ? std::string(" ") + std::strerror(e.sys_errno) : "");
}

// edu's registers (QEMU docs/specs/edu.rst).
constexpr size_t kIdent = 0x00, kLive = 0x04, kIrqStatus = 0x24, kIrqRaise = 0x60,
                 kIrqAck = 0x64, kDmaSrc = 0x80, kDmaDst = 0x88, kDmaCount = 0x90, kDmaCmd = 0x98;
constexpr uint64_t kEduBuf = 0x40000;  // the device's internal 4 KiB buffer
constexpr uint64_t kDmaStart = 1, kDmaToRam = 2, kDmaIrq = 4;
// QEMU 7.2's edu aborts on a transfer that ends at its buffer's end: < 4096.
constexpr uint64_t kLen = 4000;

bool wait_eventfd(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return false;
  uint64_t v;
  return ::read(fd, &v, sizeof v) == sizeof v;
}

bool dma(MappedBar& bar, uint64_t src, uint64_t dst, uint64_t cmd) {
  bar.write64(kDmaSrc, src);
  bar.write64(kDmaDst, dst);
  bar.write64(kDmaCount, kLen);
  bar.write64(kDmaCmd, kDmaStart | cmd);
  for (int i = 0; i < 5000; ++i) {
    if (!(bar.read64(kDmaCmd) & kDmaStart)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: sluice-vfio-edu PCI_ADDR HUGETLBFS_DIR\n");
    return 2;
  }
  const std::string addr = argv[1];
  auto group_no = iommu_group_of(addr);
  check(group_no.ok(), "device has an IOMMU group");
  if (!group_no.ok()) return 1;
  auto container = Container::open();
  if (!container.ok()) {
    std::printf("EDU-FAIL container: %s\n", err(container.error()).c_str());
    return 1;
  }
  auto group = Group::open(group_no.value());
  if (!group.ok()) {
    std::printf("EDU-FAIL group %d: %s\n", group_no.value(), err(group.error()).c_str());
    return 1;
  }
  Status att = group.value()->attach(*container.value());
  check(att.ok(), "group attached, IOMMU set");
  if (!att.ok()) return 1;
  Container& c = *container.value();
  const IommuInfo& info = c.info();
  std::printf("EDU-INFO type=%u pgsizes=0x%llx ranges=%zu dma_avail=%u\n", c.iommu_type(),
              static_cast<unsigned long long>(info.iova_pgsizes), info.ranges.size(),
              info.dma_avail.value_or(0));
  for (const IovaRange& r : info.ranges)
    std::printf("EDU-INFO range 0x%llx-0x%llx\n", static_cast<unsigned long long>(r.start),
                static_cast<unsigned long long>(r.last));
  check(c.iommu_type() == VFIO_TYPE1v2_IOMMU, "TYPE1v2 IOMMU");
  check(info.dma_avail.has_value() && *info.dma_avail > 0, "DMA_AVAIL reported");
  bool hole = false;
  for (size_t i = 1; i < info.ranges.size(); ++i)
    hole |= info.ranges[i - 1].last < 0xfee00000 && info.ranges[i].start > 0xfeefffff;
  check(hole, "IOVA ranges exclude the MSI window 0xfee00000-0xfeefffff");

  auto dev = group.value()->open_device(addr);
  if (!dev.ok()) {
    std::printf("EDU-FAIL device: %s\n", err(dev.error()).c_str());
    return 1;
  }
  Device& d = *dev.value();
  check(d.enable_bus_master().ok(), "bus master enabled");
  auto barr = d.map_region(VFIO_PCI_BAR0_REGION_INDEX);
  if (!barr.ok()) {
    std::printf("EDU-FAIL BAR0 mmap: %s\n", err(barr.error()).c_str());
    return 1;
  }
  MappedBar& bar = barr.value();
  check((bar.read32(kIdent) & 0xff) == 0xed, "BAR0 reads edu's identification");
  bar.write32(kLive, 0x12345678);
  check(bar.read32(kLive) == ~0x12345678u, "liveness register inverts");

  // MSI on an eventfd.
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  Status irq = d.set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, 0, std::span(&efd, 1));
  check(irq.ok(), "MSI bound to an eventfd");
  bar.write32(kIrqRaise, 0x1);
  check(wait_eventfd(efd, 2000), "edu's MSI arrived on the eventfd");
  bar.write32(kIrqAck, bar.read32(kIrqStatus));

  // Guest memory stand-in: 4 MiB of hugetlbfs (two 2 MiB folios).
  std::string path = std::string(argv[2]) + "/edu-dma";
  int hfd = ::open(path.c_str(), O_CREAT | O_RDWR, 0600);
  ::unlink(path.c_str());
  const uint64_t kSize = 4u << 20;
  if (hfd < 0 || ::ftruncate(hfd, kSize) != 0) {
    std::printf("EDU-FAIL hugetlbfs file: %s\n", std::strerror(errno));
    return 1;
  }
  auto* mem = static_cast<uint8_t*>(::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, hfd, 0));
  if (mem == MAP_FAILED) {
    std::printf("EDU-FAIL hugetlbfs mmap: %s\n", std::strerror(errno));
    return 1;
  }
  std::memset(mem, 0, kSize);
  // Two regions back to back in both spaces: the planner makes one call.
  // IOVAs below 256 MiB (edu's DMA mask is 28 bits).
  const uint64_t iova = 0x1000000;
  DmaRegion regs[] = {{reinterpret_cast<uint64_t>(mem), iova, 2u << 20, 2u << 20},
                      {reinterpret_cast<uint64_t>(mem) + (2u << 20), iova + (2u << 20), 2u << 20, 2u << 20}};
  DmaMapper mapper(c);
  Status ms = mapper.map(regs);
  if (!ms.ok()) std::printf("EDU-INFO map: %s\n", err(ms.error()).c_str());
  check(ms.ok(), "hugetlbfs memory mapped through the planner");
  check(mapper.kernel_mappings() == 1 && mapper.stats().map_calls == 1,
        "two contiguous 2 MiB folios took one MAP_DMA");

  // RAM -> edu -> RAM (second folio), pattern verified.
  for (uint64_t i = 0; i < kLen; ++i) mem[i] = static_cast<uint8_t>(i * 7 + 3);
  bool to_dev = dma(bar, iova, kEduBuf, kDmaIrq);
  check(to_dev && wait_eventfd(efd, 2000), "DMA RAM->device completed with an MSI");
  bar.write32(kIrqAck, bar.read32(kIrqStatus));
  uint8_t* back = mem + (2u << 20) + 0x1000;
  bool from_dev = dma(bar, kEduBuf, iova + (2u << 20) + 0x1000, kDmaToRam | kDmaIrq);
  check(from_dev && wait_eventfd(efd, 2000), "DMA device->RAM completed with an MSI");
  bar.write32(kIrqAck, bar.read32(kIrqStatus));
  check(std::memcmp(mem, back, kLen) == 0, "pattern came back through the IOMMU intact");

  // Unmap the second folio's region (the merged mapping goes, the first is
  // mapped again on its own), then DMA into it: it must not land.
  std::memset(back, 0xa5, kLen);
  Status us = mapper.unmap(std::span(&regs[1], 1));
  check(us.ok() && mapper.is_mapped(iova, 2u << 20) && !mapper.is_mapped(iova + (2u << 20), 1),
        "second region unmapped, first still mapped");
  (void)dma(bar, kEduBuf, iova + (2u << 20) + 0x1000, kDmaToRam);
  bool untouched = true;
  for (uint64_t i = 0; i < kLen; ++i) untouched &= back[i] == 0xa5;
  check(untouched, "DMA to an unmapped IOVA did not land");
  // The first region still works after the re-map.
  std::memset(mem + 0x10000, 0, kLen);
  bool again = dma(bar, kEduBuf, iova + 0x10000, kDmaToRam);
  check(again && std::memcmp(mem, mem + 0x10000, kLen) == 0, "remapped first region still takes DMA");

  check(mapper.unmap_all().ok() && mapper.kernel_mappings() == 0, "teardown unmapped everything");
  (void)d.disable_irqs(VFIO_PCI_MSI_IRQ_INDEX);
  ::close(efd);
  std::printf("EDU-DONE fails=%d\n", fails);
  return fails == 0 ? 0 : 1;
}
