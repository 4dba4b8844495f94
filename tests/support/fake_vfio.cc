#include "tests/support/fake_vfio.h"

#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace sluice::test {

namespace {

constexpr uint32_t kNumRegions = VFIO_PCI_NUM_REGIONS;
constexpr uint32_t kNumIrqs = VFIO_PCI_NUM_IRQS;
// vfio-pci places region N at N << 40 in the device fd.
constexpr int kRegionShift = 40;
constexpr uint64_t region_off(uint32_t index) { return uint64_t{index} << kRegionShift; }

template <class T>
void put(std::vector<std::byte>& b, size_t off, const T& v) {
  if (b.size() < off + sizeof v) b.resize(off + sizeof v);
  std::memcpy(b.data() + off, &v, sizeof v);
}

}  // namespace

FakeVfio::FakeVfio(FakeVfioConfig cfg) : cfg_(std::move(cfg)) {}

FakeVfio::~FakeVfio() {
  for (auto& [name, d] : devices_) {
    for (auto& [index, v] : d->irq_fds)
      for (int fd : v)
        if (fd >= 0) ::close(fd);
    if (d->bar0 != nullptr) std::free(d->bar0);
    if (d->bar4 != nullptr) std::free(d->bar4);
  }
}

void FakeVfio::add_group(int number, bool viable) { groups_[number] = Group{viable, false, {}}; }

FakeDevice& FakeVfio::add_device(int group, const std::string& name) {
  auto d = std::make_unique<FakeDevice>();
  d->name = name;
  d->bar0 = std::aligned_alloc(4096, d->bar0_size);
  std::memset(d->bar0, 0, d->bar0_size);
  // A PCI header: vendor/device of QEMU's edu, command register clear.
  d->config[0] = 0x34;
  d->config[1] = 0x12;
  d->config[2] = 0xe8;
  d->config[3] = 0x11;
  device_group_[name] = group;
  FakeDevice& ref = *d;
  devices_[name] = std::move(d);
  return ref;
}

FakeDevice& FakeVfio::add_virtio_device(int group, const std::string& name, FakeVirtio model) {
  FakeDevice& d = add_device(group, name);
  d.virtio = std::make_unique<FakeVirtio>(std::move(model));
  FakeVirtio& v = *d.virtio;
  v.queues.assign(v.num_queues, FakeVirtio::Queue{});
  d.bar4 = std::aligned_alloc(4096, 0x4000);
  std::memset(d.bar4, 0, 0x4000);
  d.msix_count = v.msix_table;
  auto& c = d.config;
  std::fill(c.begin(), c.end(), 0);
  c[0] = 0xf4; c[1] = 0x1a; c[2] = 0x42; c[3] = 0x10;  // 1af4:1042, virtio-blk (modern)
  c[PCI_STATUS] = PCI_STATUS_CAP_LIST;
  c[PCI_CAPABILITY_LIST] = 0x40;
  // Vendor capabilities: {id, next, len, cfg_type, bar, id, pad, pad, offset, length[, mult]}.
  auto vcap = [&](uint8_t at, uint8_t next, uint8_t len, uint8_t type, uint32_t off, uint32_t length) {
    c[at] = PCI_CAP_ID_VNDR;
    c[at + 1] = next;
    c[at + 2] = len;
    c[at + 3] = type;
    c[at + 4] = 4;  // BAR 4
    std::memcpy(&c[at + 8], &off, 4);
    std::memcpy(&c[at + 12], &length, 4);
  };
  vcap(0x40, 0x50, 16, VIRTIO_PCI_CAP_COMMON_CFG, 0x0, 0x1000);
  vcap(0x50, 0x68, 20, VIRTIO_PCI_CAP_NOTIFY_CFG, 0x3000, 0x1000);
  uint32_t mult = 4;
  std::memcpy(&c[0x50 + 16], &mult, 4);
  vcap(0x68, 0x78, 16, VIRTIO_PCI_CAP_ISR_CFG, 0x1000, 0x1000);
  vcap(0x78, v.msix_table ? 0x88 : 0, 16, VIRTIO_PCI_CAP_DEVICE_CFG, 0x2000, 0x1000);
  if (v.msix_table) {
    c[0x88] = PCI_CAP_ID_MSIX;
    c[0x89] = 0;
    uint16_t ctrl = static_cast<uint16_t>(v.msix_table - 1);
    std::memcpy(&c[0x8a], &ctrl, 2);
  }
  return d;
}

ssize_t FakeVfio::virtio_access(FakeDevice& d, uint64_t off, void* buf, size_t len, bool write) {
  FakeVirtio& v = *d.virtio;
  if (off >= 0x3000) {  // notify page: plain memory (the driver mmaps it)
    if (off + len > 0x4000) return -EINVAL;
    auto* m = static_cast<uint8_t*>(d.bar4) + off;
    write ? std::memcpy(m, buf, len) : std::memcpy(buf, m, len);
    return static_cast<ssize_t>(len);
  }
  if (off >= 0x2000) {  // device config
    uint64_t o = off - 0x2000;
    if (o + len > v.device_config.size()) return -EINVAL;
    write ? std::memcpy(&v.device_config[o], buf, len) : std::memcpy(buf, &v.device_config[o], len);
    return static_cast<ssize_t>(len);
  }
  if (off >= 0x1000) {  // ISR: read clears
    if (!write && len >= 1) std::memset(buf, 0, len);
    return static_cast<ssize_t>(len);
  }
  uint64_t val = 0;
  if (write) std::memcpy(&val, buf, std::min<size_t>(len, 8));
  auto q = [&]() -> FakeVirtio::Queue* {
    return v.queue_select < v.queues.size() ? &v.queues[v.queue_select] : nullptr;
  };
  auto vector_ok = [&](uint16_t vec) {
    return vec == 0xffff || (vec < v.msix_table && vec < v.refuse_vectors_from);
  };
  uint64_t out = 0;
  switch (off) {
    case VIRTIO_PCI_COMMON_DFSELECT: if (write) v.dfselect = static_cast<uint32_t>(val); else out = v.dfselect; break;
    case VIRTIO_PCI_COMMON_DF: out = v.dfselect == 0 ? (v.features & 0xffffffff) : v.dfselect == 1 ? v.features >> 32 : 0; break;
    case VIRTIO_PCI_COMMON_GFSELECT: if (write) v.gfselect = static_cast<uint32_t>(val); else out = v.gfselect; break;
    case VIRTIO_PCI_COMMON_GF:
      if (write) {
        if (v.gfselect == 0) v.driver_features = (v.driver_features & ~uint64_t{0xffffffff}) | (val & 0xffffffff);
        if (v.gfselect == 1) v.driver_features = (v.driver_features & 0xffffffff) | (val << 32);
      } else {
        out = v.gfselect == 0 ? (v.driver_features & 0xffffffff) : v.driver_features >> 32;
      }
      break;
    case VIRTIO_PCI_COMMON_MSIX:
      if (write) v.config_vector = vector_ok(static_cast<uint16_t>(val)) ? static_cast<uint16_t>(val) : 0xffff;
      else out = v.config_vector;
      break;
    case VIRTIO_PCI_COMMON_NUMQ: out = v.num_queues; break;
    case VIRTIO_PCI_COMMON_STATUS:
      if (write) {
        auto st = static_cast<uint8_t>(val);
        if (st == 0) {  // reset
          v.status = 0;
          v.driver_features = 0;
          v.config_vector = 0xffff;
          v.queues.assign(v.num_queues, FakeVirtio::Queue{});
          ++v.resets;
        } else {
          // FEATURES_OK only for a subset of what was offered, and not when refusing.
          if ((st & VIRTIO_CONFIG_S_FEATURES_OK) &&
              (v.refuse_features_ok || (v.driver_features & ~v.features) != 0))
            st = static_cast<uint8_t>(st & ~VIRTIO_CONFIG_S_FEATURES_OK);
          v.status = st;
        }
      } else {
        out = v.status;
      }
      break;
    case VIRTIO_PCI_COMMON_CFGGENERATION: out = v.generation; break;
    case VIRTIO_PCI_COMMON_Q_SELECT: if (write) v.queue_select = static_cast<uint16_t>(val); else out = v.queue_select; break;
    case VIRTIO_PCI_COMMON_Q_SIZE:
      if (q() == nullptr) break;
      if (write) q()->size = static_cast<uint16_t>(val); else out = q()->size ? q()->size : v.queue_max;
      break;
    case VIRTIO_PCI_COMMON_Q_MSIX:
      if (q() == nullptr) { out = 0xffff; break; }
      if (write) q()->vector = vector_ok(static_cast<uint16_t>(val)) ? static_cast<uint16_t>(val) : 0xffff;
      else out = q()->vector;
      break;
    case VIRTIO_PCI_COMMON_Q_ENABLE: if (q() && write) q()->enable = static_cast<uint16_t>(val); else if (q()) out = q()->enable; break;
    case VIRTIO_PCI_COMMON_Q_NOFF: out = static_cast<uint64_t>(v.queue_select) * v.notify_off_step; break;
    case VIRTIO_PCI_COMMON_Q_DESCLO: if (q() && write) q()->desc = (q()->desc & ~uint64_t{0xffffffff}) | val; break;
    case VIRTIO_PCI_COMMON_Q_DESCHI: if (q() && write) q()->desc = (q()->desc & 0xffffffff) | (val << 32); break;
    case VIRTIO_PCI_COMMON_Q_AVAILLO: if (q() && write) q()->avail = (q()->avail & ~uint64_t{0xffffffff}) | val; break;
    case VIRTIO_PCI_COMMON_Q_AVAILHI: if (q() && write) q()->avail = (q()->avail & 0xffffffff) | (val << 32); break;
    case VIRTIO_PCI_COMMON_Q_USEDLO: if (q() && write) q()->used = (q()->used & ~uint64_t{0xffffffff}) | val; break;
    case VIRTIO_PCI_COMMON_Q_USEDHI: if (q() && write) q()->used = (q()->used & 0xffffffff) | (val << 32); break;
    default: return -EINVAL;
  }
  if (!write) std::memcpy(buf, &out, std::min<size_t>(len, 8));
  return static_cast<ssize_t>(len);
}

const std::map<uint64_t, FakeMapping>& FakeVfio::mappings(int container_fd) const {
  static const std::map<uint64_t, FakeMapping> kNone;
  auto it = fds_.find(container_fd);
  if (it == fds_.end() || it->second.kind != Kind::kContainer) return kNone;
  return it->second.container->maps;
}

int FakeVfio::new_fd(Fd f) {
  int fd = next_fd_++;
  fds_.emplace(fd, std::move(f));
  return fd;
}

int FakeVfio::open(const char* path, int) {
  std::string p(path);
  if (p == "/dev/vfio/vfio") {
    return new_fd(Fd{Kind::kContainer, std::make_shared<ContainerState>(), -1, {}});
  }
  const std::string prefix = "/dev/vfio/";
  if (p.rfind(prefix, 0) != 0) return -ENOENT;
  char* end = nullptr;
  long n = std::strtol(p.c_str() + prefix.size(), &end, 10);
  if (*end != '\0') return -ENOENT;
  auto g = groups_.find(static_cast<int>(n));
  if (g == groups_.end()) return -ENOENT;
  if (g->second.open) return -EBUSY;  // one open per group
  g->second.open = true;
  return new_fd(Fd{Kind::kGroup, nullptr, static_cast<int>(n), {}});
}

int FakeVfio::close(int fd) {
  auto it = fds_.find(fd);
  if (it == fds_.end()) return -EBADF;
  Fd f = std::move(it->second);
  fds_.erase(it);
  if (f.kind == Kind::kGroup) {
    Group& g = groups_.at(f.group);
    g.open = false;
    if (g.container) {
      // The last group leaving a container tears its IOMMU down.
      if (--g.container->groups == 0) {
        g.container->maps.clear();
        g.container->iommu = 0;
      }
      g.container.reset();
    }
  } else if (f.kind == Kind::kDevice) {
    FakeDevice& d = *devices_.at(f.device);
    d.open = false;
    for (auto& [index, v] : d.irq_fds)
      for (int& e : v)
        if (e >= 0) ::close(std::exchange(e, -1));
  }
  return 0;
}

int FakeVfio::ioctl(int fd, unsigned long request, void* arg) {
  auto it = fds_.find(fd);
  if (it == fds_.end()) return -EBADF;
  switch (it->second.kind) {
    case Kind::kContainer: return container_ioctl(*it->second.container, request, arg);
    case Kind::kGroup: return group_ioctl(it->second, request, arg);
    case Kind::kDevice: return device_ioctl(*devices_.at(it->second.device), request, arg);
  }
  return -ENOTTY;
}

int FakeVfio::container_ioctl(ContainerState& c, unsigned long request, void* arg) {
  const auto value = reinterpret_cast<unsigned long>(arg);
  switch (request) {
    case VFIO_GET_API_VERSION: return VFIO_API_VERSION;
    case VFIO_CHECK_EXTENSION:
      if (value == VFIO_TYPE1v2_IOMMU) return cfg_.type1v2 ? 1 : 0;
      if (value == VFIO_TYPE1_IOMMU) return 1;
      if (value == VFIO_UNMAP_ALL) return cfg_.unmap_all ? 1 : 0;
      return 0;
    case VFIO_SET_IOMMU:
      if (c.groups == 0) return -EINVAL;  // no group, no IOMMU
      if (c.iommu != 0) return -EBUSY;
      if (value != VFIO_TYPE1_IOMMU && !(value == VFIO_TYPE1v2_IOMMU && cfg_.type1v2)) return -EINVAL;
      c.iommu = static_cast<uint32_t>(value);
      return 0;
    case VFIO_IOMMU_GET_INFO:
      if (c.iommu == 0) return -EINVAL;
      return get_info(c, arg);
    case VFIO_IOMMU_MAP_DMA:
      if (c.iommu == 0) return -EINVAL;
      return map_dma(c, arg);
    case VFIO_IOMMU_UNMAP_DMA:
      if (c.iommu == 0) return -EINVAL;
      return unmap_dma(c, arg);
    default: return -ENOTTY;
  }
}

int FakeVfio::get_info(ContainerState& c, void* arg) {
  uint32_t argsz;
  std::memcpy(&argsz, arg, sizeof argsz);
  constexpr uint32_t kMinsz = offsetof(vfio_iommu_type1_info, cap_offset);
  if (argsz < kMinsz) return -EINVAL;
  std::vector<std::byte> out(sizeof(vfio_iommu_type1_info));
  uint32_t flags = VFIO_IOMMU_INFO_PGSIZES;
  if (cfg_.report_caps) {
    flags |= VFIO_IOMMU_INFO_CAPS;
    // IOVA ranges, then migration, then DMA_AVAIL, each 8-aligned.
    size_t off = out.size();
    size_t ranges_at = off;
    // struct vfio_iommu_type1_info_cap_iova_range: header, nr_iovas,
    // reserved, then the ranges (written field by field: it ends in a
    // flexible array).
    constexpr size_t kIrHead = sizeof(vfio_iommu_type1_info_cap_iova_range);
    off += kIrHead + cfg_.ranges.size() * sizeof(vfio_iova_range);
    size_t mig_at = off;
    off += sizeof(vfio_iommu_type1_info_cap_migration);
    size_t avail_at = off;
    vfio_info_cap_header h{};
    h.id = VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE;
    h.version = 1;
    h.next = static_cast<uint32_t>(mig_at);
    put(out, ranges_at, h);
    put(out, ranges_at + offsetof(vfio_iommu_type1_info_cap_iova_range, nr_iovas),
        static_cast<uint32_t>(cfg_.ranges.size()));
    put(out, ranges_at + offsetof(vfio_iommu_type1_info_cap_iova_range, reserved), uint32_t{0});
    for (size_t i = 0; i < cfg_.ranges.size(); ++i)
      put(out, ranges_at + kIrHead + i * sizeof(vfio_iova_range),
          vfio_iova_range{cfg_.ranges[i].start, cfg_.ranges[i].last});
    vfio_iommu_type1_info_cap_migration mig{};
    mig.header.id = VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION;
    mig.header.version = 1;
    mig.header.next = static_cast<uint32_t>(avail_at);
    mig.pgsize_bitmap = min_page();
    mig.max_dirty_bitmap_size = 256u << 20;
    put(out, mig_at, mig);
    vfio_iommu_type1_info_dma_avail av{};
    av.header.id = VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL;
    av.header.version = 1;
    av.avail = cfg_.dma_avail - static_cast<uint32_t>(c.maps.size());
    put(out, avail_at, av);
  }
  vfio_iommu_type1_info head{};
  head.argsz = static_cast<uint32_t>(out.size());
  head.flags = flags;
  head.iova_pgsizes = cfg_.iova_pgsizes;
  head.cap_offset = cfg_.report_caps ? static_cast<uint32_t>(sizeof head) : 0;
  // Too small a buffer: the kernel fills the fixed part, says how much it
  // needs in argsz and reports no capabilities.
  if (argsz < out.size()) head.cap_offset = 0;
  std::memcpy(out.data(), &head, sizeof head);
  if (info_hook) info_hook(out);
  std::memcpy(arg, out.data(), std::min<size_t>(argsz, out.size()));
  return 0;
}

int FakeVfio::map_dma(ContainerState& c, void* arg) {
  vfio_iommu_type1_dma_map m;
  std::memcpy(&m, arg, sizeof m);
  if (m.argsz < sizeof m) return -EINVAL;
  if (!(m.flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE))) return -EINVAL;
  const uint64_t pg = min_page();
  if (m.size == 0 || ((m.vaddr | m.iova | m.size) & (pg - 1)) != 0) return -EINVAL;
  uint64_t end;
  if (__builtin_add_overflow(m.iova, m.size - 1, &end) ||
      __builtin_add_overflow(m.vaddr, m.size - 1, &end))
    return -EINVAL;
  const uint64_t last = m.iova + (m.size - 1);
  bool inside = std::any_of(cfg_.ranges.begin(), cfg_.ranges.end(), [&](const vfio::IovaRange& r) {
    return r.start <= m.iova && last <= r.last;
  });
  if (!inside) return -EINVAL;
  // Mappings are disjoint and sorted: only the neighbours can overlap.
  auto next = c.maps.upper_bound(m.iova);
  if (next != c.maps.end() && next->second.iova <= last) return -EEXIST;
  if (next != c.maps.begin()) {
    const FakeMapping& prev = std::prev(next)->second;
    if (prev.iova + (prev.size - 1) >= m.iova) return -EEXIST;
  }
  if (c.maps.size() >= cfg_.dma_avail) return -ENOSPC;
  if (fail_map_at >= 0 && fail_map_at-- == 0) return -fail_map_errno;
  // Pinning needs memory behind the address: msync() tells us (ENOMEM when
  // part of the range is not mapped in this process).
  if (::msync(reinterpret_cast<void*>(m.vaddr), m.size, MS_ASYNC) != 0) return -EFAULT;
  c.maps.emplace(m.iova, FakeMapping{m.vaddr, m.iova, m.size});
  ++map_calls;
  return 0;
}

int FakeVfio::unmap_dma(ContainerState& c, void* arg) {
  vfio_iommu_type1_dma_unmap u;
  std::memcpy(&u, arg, sizeof u);
  if (u.argsz < sizeof u) return -EINVAL;
  if (u.flags & VFIO_DMA_UNMAP_FLAG_ALL) {
    if (!cfg_.unmap_all || u.iova != 0 || u.size != 0) return -EINVAL;
    uint64_t total = 0;
    for (const auto& [iova, x] : c.maps) total += x.size;
    c.maps.clear();
    u.size = total;
  } else {
    if (u.flags != 0) return -EINVAL;
    const uint64_t pg = min_page();
    if (u.size == 0 || ((u.iova | u.size) & (pg - 1)) != 0) return -EINVAL;
    uint64_t last;
    if (__builtin_add_overflow(u.iova, u.size - 1, &last)) return -EINVAL;
    if (c.iommu == VFIO_TYPE1v2_IOMMU) {
      // TYPE1v2: the range may not split a mapping at either end.
      for (const auto& [iova, x] : c.maps) {
        uint64_t xl = x.iova + (x.size - 1);
        if ((x.iova < u.iova && u.iova <= xl) || (x.iova <= last && last < xl)) return -EINVAL;
      }
    }
    uint64_t total = 0;
    for (auto it = c.maps.begin(); it != c.maps.end();) {
      if (it->second.iova >= u.iova && it->second.iova + (it->second.size - 1) <= last) {
        total += it->second.size;
        it = c.maps.erase(it);
      } else {
        ++it;
      }
    }
    u.size = total;
  }
  ++unmap_calls;
  std::memcpy(arg, &u, sizeof u);
  return 0;
}

int FakeVfio::group_ioctl(Fd& f, unsigned long request, void* arg) {
  Group& g = groups_.at(f.group);
  switch (request) {
    case VFIO_GROUP_GET_STATUS: {
      vfio_group_status st;
      std::memcpy(&st, arg, sizeof st);
      if (st.argsz < sizeof st) return -EINVAL;
      st.flags = (g.viable ? VFIO_GROUP_FLAGS_VIABLE : 0u) |
                 (g.container ? VFIO_GROUP_FLAGS_CONTAINER_SET : 0u);
      std::memcpy(arg, &st, sizeof st);
      return 0;
    }
    case VFIO_GROUP_SET_CONTAINER: {
      int cfd;
      std::memcpy(&cfd, arg, sizeof cfd);
      auto it = fds_.find(cfd);
      if (it == fds_.end() || it->second.kind != Kind::kContainer) return -EBADF;
      if (!g.viable) return -EPERM;
      if (g.container) return -EBUSY;
      g.container = it->second.container;
      ++g.container->groups;
      return 0;
    }
    case VFIO_GROUP_UNSET_CONTAINER:
      if (!g.container) return -EINVAL;
      if (--g.container->groups == 0) {
        g.container->maps.clear();
        g.container->iommu = 0;
      }
      g.container.reset();
      return 0;
    case VFIO_GROUP_GET_DEVICE_FD: {
      if (!g.container || g.container->iommu == 0) return -EINVAL;
      std::string name(static_cast<const char*>(arg));
      auto d = devices_.find(name);
      if (d == devices_.end() || device_group_.at(name) != f.group) return -ENODEV;
      if (d->second->open) return -EBUSY;
      d->second->open = true;
      return new_fd(Fd{Kind::kDevice, nullptr, f.group, name});
    }
    default: return -ENOTTY;
  }
}

int FakeVfio::device_ioctl(FakeDevice& d, unsigned long request, void* arg) {
  switch (request) {
    case VFIO_DEVICE_GET_INFO: {
      vfio_device_info info;
      std::memcpy(&info, arg, sizeof info);
      if (info.argsz < offsetof(vfio_device_info, cap_offset)) return -EINVAL;
      info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
      info.num_regions = kNumRegions;
      info.num_irqs = kNumIrqs;
      std::memcpy(arg, &info, offsetof(vfio_device_info, cap_offset));
      return 0;
    }
    case VFIO_DEVICE_GET_REGION_INFO: {
      vfio_region_info ri;
      std::memcpy(&ri, arg, sizeof ri);
      if (ri.argsz < sizeof ri || ri.index >= kNumRegions) return -EINVAL;
      ri.flags = 0;
      ri.size = 0;
      ri.offset = region_off(ri.index);
      ri.cap_offset = 0;
      if (ri.index == VFIO_PCI_BAR0_REGION_INDEX) {
        ri.size = d.bar0_size;
        ri.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
      } else if (ri.index == VFIO_PCI_BAR4_REGION_INDEX && d.virtio) {
        ri.size = 0x4000;
        ri.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
      } else if (ri.index == VFIO_PCI_CONFIG_REGION_INDEX) {
        ri.size = d.config.size();
        ri.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      }
      std::memcpy(arg, &ri, sizeof ri);
      return 0;
    }
    case VFIO_DEVICE_GET_IRQ_INFO: {
      vfio_irq_info ii;
      std::memcpy(&ii, arg, sizeof ii);
      if (ii.argsz < sizeof ii || ii.index >= kNumIrqs) return -EINVAL;
      ii.flags = VFIO_IRQ_INFO_EVENTFD;
      ii.count = ii.index == VFIO_PCI_MSI_IRQ_INDEX    ? d.msi_count
                 : ii.index == VFIO_PCI_MSIX_IRQ_INDEX ? d.msix_count
                 : ii.index == VFIO_PCI_INTX_IRQ_INDEX ? 1
                                                       : 0;
      std::memcpy(arg, &ii, sizeof ii);
      return 0;
    }
    case VFIO_DEVICE_SET_IRQS: {
      vfio_irq_set s;
      std::memcpy(&s, arg, sizeof s);
      if (s.argsz < sizeof s || s.index >= kNumIrqs) return -EINVAL;
      uint32_t count = s.index == VFIO_PCI_MSI_IRQ_INDEX ? d.msi_count
                       : s.index == VFIO_PCI_MSIX_IRQ_INDEX ? d.msix_count : 1;
      auto& v = d.irq_fds[s.index];
      if ((s.flags & VFIO_IRQ_SET_DATA_NONE) && s.count == 0) {
        for (int& e : v)
          if (e >= 0) ::close(std::exchange(e, -1));
        v.clear();
        return 0;
      }
      if (!(s.flags & VFIO_IRQ_SET_DATA_EVENTFD) || !(s.flags & VFIO_IRQ_SET_ACTION_TRIGGER))
        return -EINVAL;
      if (s.start >= count || s.count == 0 || s.count > count - s.start) return -EINVAL;
      if (s.argsz < sizeof s + uint64_t{s.count} * sizeof(int32_t)) return -EINVAL;
      std::vector<int32_t> fds(s.count);
      std::memcpy(fds.data(), static_cast<std::byte*>(arg) + sizeof s, s.count * sizeof(int32_t));
      // The kernel takes an eventfd_ctx reference; a dup is ours.
      std::vector<int> dups;
      for (int32_t fd : fds) {
        int x = fd >= 0 ? ::dup(fd) : -1;
        if (fd >= 0 && x < 0) {
          for (int y : dups)
            if (y >= 0) ::close(y);
          return -EBADF;
        }
        dups.push_back(x);
      }
      if (v.size() < count) v.resize(count, -1);
      for (uint32_t i = 0; i < s.count; ++i) {
        if (v[s.start + i] >= 0) ::close(v[s.start + i]);
        v[s.start + i] = dups[i];
      }
      return 0;
    }
    case VFIO_DEVICE_RESET:
      ++d.resets;
      return 0;
    default: return -ENOTTY;
  }
}

ssize_t FakeVfio::pread(int fd, void* buf, size_t len, off_t off) {
  auto it = fds_.find(fd);
  if (it == fds_.end() || it->second.kind != Kind::kDevice) return -EBADF;
  FakeDevice& d = *devices_.at(it->second.device);
  auto o = static_cast<uint64_t>(off);
  uint64_t bar4 = region_off(VFIO_PCI_BAR4_REGION_INDEX);
  if (d.virtio && o >= bar4 && o < bar4 + 0x4000) return virtio_access(d, o - bar4, buf, len, false);
  uint64_t base = region_off(VFIO_PCI_CONFIG_REGION_INDEX);
  if (o < base || o - base > d.config.size() || len > d.config.size() - (o - base)) return -EINVAL;
  std::memcpy(buf, d.config.data() + (o - base), len);
  return static_cast<ssize_t>(len);
}

ssize_t FakeVfio::pwrite(int fd, const void* buf, size_t len, off_t off) {
  auto it = fds_.find(fd);
  if (it == fds_.end() || it->second.kind != Kind::kDevice) return -EBADF;
  FakeDevice& d = *devices_.at(it->second.device);
  auto o = static_cast<uint64_t>(off);
  uint64_t bar4 = region_off(VFIO_PCI_BAR4_REGION_INDEX);
  if (d.virtio && o >= bar4 && o < bar4 + 0x4000)
    return virtio_access(d, o - bar4, const_cast<void*>(buf), len, true);
  uint64_t base = region_off(VFIO_PCI_CONFIG_REGION_INDEX);
  if (o < base || o - base > d.config.size() || len > d.config.size() - (o - base)) return -EINVAL;
  std::memcpy(d.config.data() + (o - base), buf, len);
  return static_cast<ssize_t>(len);
}

void* FakeVfio::mmap(size_t len, int, int fd, off_t off, int* err) {
  auto it = fds_.find(fd);
  if (it == fds_.end() || it->second.kind != Kind::kDevice) {
    *err = EBADF;
    return nullptr;
  }
  FakeDevice& d = *devices_.at(it->second.device);
  if (d.virtio && static_cast<uint64_t>(off) == region_off(VFIO_PCI_BAR4_REGION_INDEX) && len <= 0x4000)
    return d.bar4;
  if (static_cast<uint64_t>(off) != region_off(VFIO_PCI_BAR0_REGION_INDEX) || len > d.bar0_size) {
    *err = EINVAL;
    return nullptr;
  }
  return d.bar0;
}

int FakeVfio::munmap(void* addr, size_t) {
  for (auto& [name, d] : devices_)
    if (d->bar0 == addr || d->bar4 == addr) return 0;
  return -EINVAL;
}

bool FakeVfio::trigger(const std::string& device, uint32_t index, uint32_t v) {
  auto d = devices_.find(device);
  if (d == devices_.end()) return false;
  auto& fds = d->second->irq_fds[index];
  if (v >= fds.size() || fds[v] < 0) return false;
  uint64_t one = 1;
  return ::write(fds[v], &one, sizeof one) == sizeof one;
}

}  // namespace sluice::test
