// sluice-virtio-vfio: runs inside a test guest (TCG, emulated VT-d) against
// QEMU's virtio-blk-pci devices (disable-legacy=on, iommu_platform=on) bound
// to vfio-pci, through Sluice's userspace virtio-pci driver (vfio/).
//
// For each ADDR:POLICY:INDEX argument: bring the device up (ACCESS_PLATFORM
// must be offered and accepted), program vectors down the ladder and check
// the policy in force and every read-back vector, read the pattern the host
// wrote at sector 0 (byte i = (i*31 + 7 + INDEX) & 0xff, 64 KiB), write a
// pattern per queue at sector 2048 + 128*q (byte i = (i*17 + 3 + q + 16*INDEX)
// & 0xff, 64 KiB) and read it back; with interrupts, every request's MSI-X
// arrives on its queue's eventfd. The host checks the image afterwards.
// Prints "VV-OK <check>" / "VV-FAIL <check>" and "VV-DONE fails=N".
//
// ADDR:bringup:0 brings any virtio device (virtio-net in the test) up
// through the transport alone: vectors for every queue, rings, DRIVER_OK.
//
// Usage: sluice-virtio-vfio ADDR:per-queue|shared|none|bringup:INDEX ...
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "vfio/container.h"
#include "vfio/device.h"
#include "vfio/dma_mapper.h"
#include "vfio/dma_arena.h"
#include "vfio/virtio_blk.h"

using namespace sluice;
using namespace sluice::vfio;

namespace {

int fails = 0;
std::string dev_name;
void check(bool ok, const std::string& what) {
  std::printf("%s %s %s\n", ok ? "VV-OK" : "VV-FAIL", dev_name.c_str(), what.c_str());
  std::fflush(stdout);
  fails += !ok;
}

std::string err(const Error& e) {
  return std::string(e.name()) + (e.sys_errno ? std::string(" ") + std::strerror(e.sys_errno) : "");
}

constexpr uint32_t kLen = 64 * 1024;

// One request, waited for: returns the completion status (or 0xff on timeout)
// and whether an interrupt announced it.
uint8_t run(VirtioBlkDriver& d, uint16_t q, uint32_t type, uint64_t sector, uint64_t iova,
            bool* irq) {
  virtq::DriverBuf data{iova, kLen, type == VIRTIO_BLK_T_IN};
  if (Status s = d.submit(q, type, sector, std::span(&data, 1), 7); !s.ok()) {
    std::printf("VV-INFO submit: %s\n", err(s.error()).c_str());
    return 0xff;
  }
  uint8_t status = 0xff;
  *irq = false;
  for (int i = 0; i < 200 && status == 0xff; ++i) {
    *irq |= d.wait(q, 50);
    auto n = d.reap(q, [&](const BlkCompletion& c) { status = c.status; });
    if (!n.ok()) {
      std::printf("VV-INFO reap: %s\n", err(n.error()).c_str());
      return 0xff;
    }
  }
  return status;
}

void test_device(const std::string& addr, const std::string& want_policy, int index) {
  dev_name = addr;
  auto g = iommu_group_of(addr);
  if (!g.ok()) return check(false, "IOMMU group: " + err(g.error()));
  auto c = Container::open();
  if (!c.ok()) return check(false, "container: " + err(c.error()));
  auto grp = Group::open(g.value());
  if (!grp.ok()) return check(false, "group: " + err(grp.error()));
  if (Status s = grp.value()->attach(*c.value()); !s.ok()) return check(false, "attach: " + err(s.error()));
  auto dev = grp.value()->open_device(addr);
  if (!dev.ok()) return check(false, "device: " + err(dev.error()));
  DmaMapper mapper(*c.value());
  VirtioBlkOptions o;
  o.queues = 2;
  o.queue_size = 32;
  auto drv = VirtioBlkDriver::start(*dev.value(), mapper, o);
  if (!drv.ok()) return check(false, "driver start: " + err(drv.error()));
  VirtioBlkDriver& d = *drv.value();
  VirtioPci& p = d.pci();
  const uint64_t ap = uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM;
  check((p.device_features() & ap) && (d.features() & ap), "ACCESS_PLATFORM offered and accepted");
  std::printf("VV-INFO %s queues=%u msix=%d table=%u policy=%s config_vector=%u", addr.c_str(),
              d.queues(), p.caps().msix, p.caps().msix_table_size,
              std::string(vector_policy_name(p.policy())).c_str(), p.config_vector());
  for (uint16_t q = 0; q < d.queues(); ++q) std::printf(" q%u=%u", q, p.queue_vector(q));
  std::printf(" capacity=%llu\n", static_cast<unsigned long long>(d.capacity_sectors()));
  check(std::string(vector_policy_name(p.policy())).rfind(want_policy, 0) == 0,
        "vector policy is " + want_policy);
  // Read-back vectors as the policy says.
  bool vec_ok = true;
  for (uint16_t q = 0; q < d.queues(); ++q) {
    uint16_t want = p.policy() == VectorPolicy::kPerQueue ? static_cast<uint16_t>(q + 1)
                    : p.policy() == VectorPolicy::kShared ? 1
                                                          : kVirtioMsiNoVector;
    vec_ok &= p.queue_vector(q) == want;
  }
  vec_ok &= p.config_vector() == (p.policy() == VectorPolicy::kNone ? kVirtioMsiNoVector : 0);
  check(vec_ok, "every vector read back as programmed");

  auto buf = d.arena().alloc(kLen, 4096);
  if (!buf.ok()) return check(false, "arena");
  auto* mem = reinterpret_cast<uint8_t*>(d.arena().host(buf.value(), kLen));
  bool irq = false;
  uint8_t st = run(d, 0, VIRTIO_BLK_T_IN, 0, buf.value(), &irq);
  bool host_ok = st == VIRTIO_BLK_S_OK;
  for (uint32_t i = 0; host_ok && i < kLen; ++i) host_ok = mem[i] == static_cast<uint8_t>(i * 31 + 7 + index);
  check(host_ok, "read the host's pattern through the IOMMU");
  const bool irqs = p.policy() != VectorPolicy::kNone;
  bool all_irq = irq == irqs;
  for (uint16_t q = 0; q < d.queues(); ++q) {
    for (uint32_t i = 0; i < kLen; ++i) mem[i] = static_cast<uint8_t>(i * 17 + 3 + q + 16 * index);
    uint64_t sector = 2048 + 128u * q;
    st = run(d, q, VIRTIO_BLK_T_OUT, sector, buf.value(), &irq);
    all_irq &= irq == irqs;
    check(st == VIRTIO_BLK_S_OK, "write on queue " + std::to_string(q));
    std::memset(mem, 0, kLen);
    st = run(d, q, VIRTIO_BLK_T_IN, sector, buf.value(), &irq);
    all_irq &= irq == irqs;
    bool same = st == VIRTIO_BLK_S_OK;
    for (uint32_t i = 0; same && i < kLen; ++i) same = mem[i] == static_cast<uint8_t>(i * 17 + 3 + q + 16 * index);
    check(same, "read back queue " + std::to_string(q) + "'s pattern");
  }
  uint64_t total = 0;
  for (uint16_t q = 0; q < d.queues(); ++q) total += d.interrupts(q);
  std::printf("VV-INFO %s interrupts:", addr.c_str());
  for (uint16_t q = 0; q < d.queues(); ++q)
    std::printf(" q%u=%llu", q, static_cast<unsigned long long>(d.interrupts(q)));
  std::printf("\n");
  if (irqs)
    check(all_irq && total >= 1 + 2u * d.queues(), "an MSI-X interrupt announced every request");
  else
    check(all_irq && total == 0, "no interrupts: completions found by polling");
}

// Any virtio device (virtio-net here): transport bring-up only. Every queue
// the device has gets a ring in DMA memory and an interrupt wish; the ladder
// must land on a policy whose vectors all read back, and the device must
// accept DRIVER_OK.
void bringup(const std::string& addr) {
  dev_name = addr;
  auto g = iommu_group_of(addr);
  if (!g.ok()) return check(false, "IOMMU group: " + err(g.error()));
  auto c = Container::open();
  auto grp = c.ok() ? Group::open(g.value()) : Result<std::unique_ptr<Group>>(c.error());
  if (!grp.ok()) return check(false, "group: " + err(grp.error()));
  if (Status s = grp.value()->attach(*c.value()); !s.ok()) return check(false, "attach: " + err(s.error()));
  auto dev = grp.value()->open_device(addr);
  if (!dev.ok()) return check(false, "device: " + err(dev.error()));
  DmaMapper mapper(*c.value());
  check(dev.value()->enable_bus_master().ok(), "bus master");
  auto p = VirtioPci::open(*dev.value());
  if (!p.ok()) return check(false, "virtio capabilities: " + err(p.error()));
  VirtioPci& v = *p.value();
  check(v.reset().ok(), "reset completes");
  auto f = v.negotiate(0);
  const uint64_t ap = uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM;
  check(f.ok() && (f.value() & ap), "VERSION_1 and ACCESS_PLATFORM negotiated");
  if (!f.ok()) return;
  uint16_t nq = std::min<uint16_t>(v.num_queues(), 16);
  bool wants[16];
  for (uint16_t q = 0; q < nq; ++q) wants[q] = true;
  auto pol = v.setup_vectors(std::span<const bool>(wants, nq));
  check(pol.ok(), "vectors programmed");
  if (!pol.ok()) return;
  std::printf("VV-INFO %s queues=%u table=%u policy=%s config_vector=%u", addr.c_str(), nq, v.caps().msix_table_size,
              std::string(vector_policy_name(pol.value())).c_str(), v.config_vector());
  bool readback = true;
  for (uint16_t q = 0; q < nq; ++q) {
    std::printf(" q%u=%u", q, v.queue_vector(q));
    uint16_t want = pol.value() == VectorPolicy::kPerQueue ? static_cast<uint16_t>(q + 1)
                    : pol.value() == VectorPolicy::kShared ? 1
                                                           : kVirtioMsiNoVector;
    readback &= v.queue_vector(q) == want;
  }
  std::printf("\n");
  check(readback, "every queue vector read back as programmed");
  auto arena = DmaArena::create(mapper, 0x200000, 2u << 20);
  if (!arena.ok()) return check(false, "arena: " + err(arena.error()));
  bool queues_ok = true;
  for (uint16_t q = 0; q < nq; ++q) {
    auto max = v.queue_max_size(q);
    uint16_t size = 64;
    if (!max.ok() || max.value() == 0) continue;
    while (size > max.value()) size = static_cast<uint16_t>(size / 2);
    auto d = arena.value()->alloc(virtq::desc_table_bytes(size), 16);
    auto a = arena.value()->alloc(virtq::avail_ring_bytes(size), 2);
    auto u = arena.value()->alloc(virtq::used_ring_bytes(size), 4);
    queues_ok &= d.ok() && a.ok() && u.ok() && v.enable_queue(q, size, d.value(), a.value(), u.value()).ok();
  }
  check(queues_ok, "every queue enabled with rings in DMA memory");
  check(v.driver_ok().ok() && (v.status() & VIRTIO_CONFIG_S_DRIVER_OK), "device accepted DRIVER_OK");
  check(v.reset().ok(), "reset after use");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    // ADDR is 0000:00:10.0 (it has colons): split from the right.
    auto c2 = a.rfind(':');
    auto c1 = c2 == std::string::npos ? std::string::npos : a.rfind(':', c2 - 1);
    if (c1 == std::string::npos) {
      std::fprintf(stderr, "usage: sluice-virtio-vfio ADDR:POLICY:INDEX ...\n");
      return 2;
    }
    std::string mode = a.substr(c1 + 1, c2 - c1 - 1);
    if (mode == "bringup")
      bringup(a.substr(0, c1));
    else
      test_device(a.substr(0, c1), mode, std::atoi(a.c_str() + c2 + 1));
  }
  std::printf("VV-DONE fails=%d\n", fails);
  return fails == 0 ? 0 : 1;
}
