#include "vfio/virtio_pci.h"

#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "dataplane/base/log.h"

namespace sluice::vfio {

namespace {
constexpr uint32_t kCommonMinLen = VIRTIO_PCI_COMMON_Q_USEDHI + 4;  // through queue_device
}  // namespace

std::string_view vector_policy_name(VectorPolicy p) noexcept {
  switch (p) {
    case VectorPolicy::kPerQueue: return "per-queue";
    case VectorPolicy::kShared: return "shared";
    case VectorPolicy::kNone: return "none (polled)";
  }
  return "?";
}

Result<VirtioPciCaps> parse_virtio_pci_caps(std::span<const uint8_t> cfg) {
  if (cfg.size() < 256) return Errc::kVirtioNoCap;
  auto rd16 = [&](size_t o) { return static_cast<uint16_t>(cfg[o] | (cfg[o + 1] << 8)); };
  auto rd32 = [&](size_t o) {
    return uint32_t{cfg[o]} | (uint32_t{cfg[o + 1]} << 8) | (uint32_t{cfg[o + 2]} << 16) |
           (uint32_t{cfg[o + 3]} << 24);
  };
  if (!(rd16(PCI_STATUS) & PCI_STATUS_CAP_LIST)) return Errc::kVirtioNoCap;
  VirtioPciCaps caps;
  bool seen[64] = {};
  unsigned count = 0;
  for (size_t ptr = cfg[PCI_CAPABILITY_LIST] & ~3u; ptr != 0; ptr = cfg[ptr + 1] & ~3u) {
    // Capabilities live after the 64-byte header, each visited once.
    if (ptr < 0x40 || ptr > 256 - 4 || seen[ptr / 4] || ++count > 48) return Errc::kVirtioNoCap;
    seen[ptr / 4] = true;
    uint8_t id = cfg[ptr];
    if (id == PCI_CAP_ID_MSIX) {
      caps.msix = true;
      caps.msix_table_size = static_cast<uint16_t>((rd16(ptr + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_QSIZE) + 1);
      continue;
    }
    if (id != PCI_CAP_ID_VNDR) continue;
    uint8_t len = cfg[ptr + VIRTIO_PCI_CAP_LEN];
    if (len < sizeof(virtio_pci_cap) || ptr + len > 256) return Errc::kVirtioNoCap;
    uint8_t type = cfg[ptr + VIRTIO_PCI_CAP_CFG_TYPE];
    uint8_t bar = cfg[ptr + VIRTIO_PCI_CAP_BAR];
    if (bar > 5) continue;  // reserved BAR values: ignore the capability (4.1.4)
    VirtioCapRef ref{true, bar, rd32(ptr + VIRTIO_PCI_CAP_OFFSET), rd32(ptr + VIRTIO_PCI_CAP_LENGTH)};
    if (static_cast<uint64_t>(ref.offset) + ref.length > UINT32_MAX) return Errc::kVirtioNoCap;
    VirtioCapRef* slot = nullptr;
    switch (type) {
      case VIRTIO_PCI_CAP_COMMON_CFG: slot = &caps.common; break;
      case VIRTIO_PCI_CAP_NOTIFY_CFG:
        if (len < sizeof(virtio_pci_notify_cap)) return Errc::kVirtioNoCap;
        if (!caps.notify.present) caps.notify_off_multiplier = rd32(ptr + sizeof(virtio_pci_cap));
        slot = &caps.notify;
        break;
      case VIRTIO_PCI_CAP_ISR_CFG: slot = &caps.isr; break;
      case VIRTIO_PCI_CAP_DEVICE_CFG: slot = &caps.device; break;
      default: break;  // PCI_CFG, shared memory, vendor-specific: unused
    }
    if (slot != nullptr && !slot->present) *slot = ref;
  }
  if (!caps.common.present || caps.common.length < kCommonMinLen || !caps.notify.present)
    return Errc::kVirtioNoCap;
  return caps;
}

Result<std::unique_ptr<VirtioPci>> VirtioPci::open(Device& dev) {
  std::vector<uint8_t> cfg(256);
  for (uint32_t off = 0; off < 256; off += 4) {
    auto v = dev.config_read32(off);
    if (!v.ok()) return v.error();
    std::memcpy(cfg.data() + off, &v.value(), 4);
  }
  auto caps = parse_virtio_pci_caps(cfg);
  if (!caps.ok()) return caps.error();
  std::unique_ptr<VirtioPci> p(new VirtioPci(dev));
  p->caps_ = caps.value();
  for (const VirtioCapRef* c : {&p->caps_.common, &p->caps_.notify, &p->caps_.isr, &p->caps_.device}) {
    if (!c->present) continue;
    // The window must lie inside its BAR.
    auto ri = dev.region(VFIO_PCI_BAR0_REGION_INDEX + c->bar);
    if (!ri.ok()) return ri.error();
    if (c->offset > ri->size || c->length > ri->size - c->offset) return Errc::kVirtioNoCap;
  }
  // One notify offset per queue, sized once: a relay thread may read them
  // while the control thread enables other queues.
  p->notify_off_.assign(p->num_queues(), UINT16_MAX);
  // The doorbell BAR is mapped: notifications are plain stores.
  auto m = dev.map_region(VFIO_PCI_BAR0_REGION_INDEX + p->caps_.notify.bar);
  if (!m.ok()) return m.error();
  p->bars_[p->caps_.notify.bar] = std::move(m.value());
  if (p->caps_.notify.offset > p->bars_[p->caps_.notify.bar].size() ||
      p->caps_.notify.length > p->bars_[p->caps_.notify.bar].size() - p->caps_.notify.offset)
    return Errc::kVirtioNoCap;
  return p;
}

VirtioPci::~VirtioPci() {
  // Quiesce the device before its interrupts and our memory go away.
  if (caps_.common.present) (void)reset();
  teardown_vectors();
}

volatile uint8_t* VirtioPci::window(const VirtioCapRef& c) const noexcept {
  return bars_[c.bar].data() + c.offset;
}

// Register access to the common and device windows goes through the device
// fd (pread/pwrite on the BAR region: the syscall seam, so the fake kernel
// can model a device); only the notify doorbell, the one hot-path write, is
// a store into the mmapped BAR. A failed access reads as all ones, like a
// PCI read of a device that went away.
template <class T>
T VirtioPci::rd(const VirtioCapRef& c, uint32_t off) const noexcept {
  T v{};
  if (!dev_->region_read(VFIO_PCI_BAR0_REGION_INDEX + c.bar, uint64_t{c.offset} + off,
                         std::as_writable_bytes(std::span(&v, 1)))
           .ok())
    return static_cast<T>(~T{});
  return v;
}
template <class T>
void VirtioPci::wr(const VirtioCapRef& c, uint32_t off, T v) noexcept {
  (void)dev_->region_write(VFIO_PCI_BAR0_REGION_INDEX + c.bar, uint64_t{c.offset} + off,
                           std::as_bytes(std::span(&v, 1)));
}
uint8_t VirtioPci::c8(uint32_t off) const noexcept { return rd<uint8_t>(caps_.common, off); }
uint16_t VirtioPci::c16(uint32_t off) const noexcept { return rd<uint16_t>(caps_.common, off); }
uint32_t VirtioPci::c32(uint32_t off) const noexcept { return rd<uint32_t>(caps_.common, off); }
void VirtioPci::w8(uint32_t off, uint8_t v) noexcept { wr(caps_.common, off, v); }
void VirtioPci::w16(uint32_t off, uint16_t v) noexcept { wr(caps_.common, off, v); }
void VirtioPci::w32(uint32_t off, uint32_t v) noexcept { wr(caps_.common, off, v); }

uint8_t VirtioPci::status() const noexcept { return c8(VIRTIO_PCI_COMMON_STATUS); }

Status VirtioPci::reset() {
  w8(VIRTIO_PCI_COMMON_STATUS, 0);
  // 4.1.4.3.2: the driver waits until device_status reads 0.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (status() != 0) {
    if (std::chrono::steady_clock::now() > deadline) return Errc::kVirtioDeviceFailed;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  std::fill(notify_off_.begin(), notify_off_.end(), UINT16_MAX);
  return {};
}

uint64_t VirtioPci::device_features() noexcept {
  w32(VIRTIO_PCI_COMMON_DFSELECT, 0);
  uint64_t lo = c32(VIRTIO_PCI_COMMON_DF);
  w32(VIRTIO_PCI_COMMON_DFSELECT, 1);
  uint64_t hi = c32(VIRTIO_PCI_COMMON_DF);
  return lo | (hi << 32);
}

Result<uint64_t> VirtioPci::negotiate(uint64_t wanted) {
  w8(VIRTIO_PCI_COMMON_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  w8(VIRTIO_PCI_COMMON_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  uint64_t offered = device_features();
  constexpr uint64_t kVersion1 = uint64_t{1} << VIRTIO_F_VERSION_1;
  if (!(offered & kVersion1)) {
    w8(VIRTIO_PCI_COMMON_STATUS, status() | VIRTIO_CONFIG_S_FAILED);
    return Errc::kVirtioFeatures;
  }
  // ACCESS_PLATFORM: the device's DMA goes through the IOMMU, which is what
  // we program (IOVAs); a device offering it must have it accepted.
  uint64_t accept = offered & (wanted | kVersion1 | (uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM));
  w32(VIRTIO_PCI_COMMON_GFSELECT, 0);
  w32(VIRTIO_PCI_COMMON_GF, static_cast<uint32_t>(accept));
  w32(VIRTIO_PCI_COMMON_GFSELECT, 1);
  w32(VIRTIO_PCI_COMMON_GF, static_cast<uint32_t>(accept >> 32));
  w8(VIRTIO_PCI_COMMON_STATUS,
     VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
  if (!(status() & VIRTIO_CONFIG_S_FEATURES_OK)) {
    w8(VIRTIO_PCI_COMMON_STATUS, status() | VIRTIO_CONFIG_S_FAILED);
    return Errc::kVirtioFeatures;
  }
  return accept;
}

uint16_t VirtioPci::num_queues() const noexcept { return c16(VIRTIO_PCI_COMMON_NUMQ); }

Result<uint16_t> VirtioPci::queue_max_size(uint16_t q) {
  if (q >= num_queues()) return Errc::kVirtioQueueUnavailable;
  w16(VIRTIO_PCI_COMMON_Q_SELECT, q);
  return c16(VIRTIO_PCI_COMMON_Q_SIZE);
}

uint16_t VirtioPci::queue_vector(uint16_t q) const noexcept {
  return q < queue_vectors_.size() ? queue_vectors_[q] : kVirtioMsiNoVector;
}

int VirtioPci::vector_eventfd(uint16_t vector) const noexcept {
  return vector < vector_bound_.size() ? vector_bound_[vector] : -1;
}

void VirtioPci::teardown_vectors() noexcept {
  if (!vector_fds_.empty()) (void)dev_->disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX);
  vector_fds_.clear();
  vector_bound_.clear();
}

bool VirtioPci::try_rung(VectorPolicy p, std::span<const bool> wants) {
  const auto nq = static_cast<uint16_t>(wants.size());
  uint32_t nvec = p == VectorPolicy::kPerQueue ? 1u + nq : p == VectorPolicy::kShared ? 2u : 0u;
  if (nvec > 0 && (!caps_.msix || nvec > caps_.msix_table_size)) return false;
  // Vectors first (the kernel enables MSI-X with that many entries), then
  // the device's mapping of them, each read back.
  if (nvec > 0) {
    std::vector<int> fds;
    for (uint32_t i = 0; i < nvec; ++i) {
      int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (fd < 0) {
        teardown_vectors();
        return false;
      }
      vector_fds_.emplace_back(fd);
      fds.push_back(fd);
    }
    if (!dev_->set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, fds).ok()) {
      teardown_vectors();
      return false;
    }
    vector_bound_ = fds;
  }
  bool ok = true;
  uint16_t cfg_vec = nvec > 0 ? 0 : kVirtioMsiNoVector;
  w16(VIRTIO_PCI_COMMON_MSIX, cfg_vec);
  config_vector_ = c16(VIRTIO_PCI_COMMON_MSIX);
  if (config_vector_ != cfg_vec) ok = false;
  queue_vectors_.assign(nq, kVirtioMsiNoVector);
  for (uint16_t q = 0; ok && q < nq; ++q) {
    uint16_t v = kVirtioMsiNoVector;
    if (wants[q] && nvec > 0) v = p == VectorPolicy::kPerQueue ? static_cast<uint16_t>(1 + q) : 1;
    w16(VIRTIO_PCI_COMMON_Q_SELECT, q);
    w16(VIRTIO_PCI_COMMON_Q_MSIX, v);
    queue_vectors_[q] = c16(VIRTIO_PCI_COMMON_Q_MSIX);
    if (queue_vectors_[q] != v) ok = false;  // NO_VECTOR read back: refused
  }
  if (ok) return true;
  // Undo this rung: every mapping back to NO_VECTOR, the vectors released.
  w16(VIRTIO_PCI_COMMON_MSIX, kVirtioMsiNoVector);
  for (uint16_t q = 0; q < nq; ++q) {
    w16(VIRTIO_PCI_COMMON_Q_SELECT, q);
    w16(VIRTIO_PCI_COMMON_Q_MSIX, kVirtioMsiNoVector);
  }
  config_vector_ = kVirtioMsiNoVector;
  queue_vectors_.assign(nq, kVirtioMsiNoVector);
  teardown_vectors();
  return false;
}

Result<VectorPolicy> VirtioPci::setup_vectors(std::span<const bool> wants_irq) {
  if (wants_irq.size() > num_queues()) return Errc::kVirtioQueueUnavailable;
  teardown_vectors();
  for (VectorPolicy p : {VectorPolicy::kPerQueue, VectorPolicy::kShared, VectorPolicy::kNone}) {
    if (try_rung(p, wants_irq)) {
      policy_ = p;
      return p;
    }
    if (p != VectorPolicy::kNone)
      LOG_INFO("vfio", "%s: %s vectors not available, trying the next policy", dev_->name().c_str(),
               vector_policy_name(p).data());
  }
  return Errc::kVfioIrqBad;  // even NO_VECTOR was not accepted
}

Status VirtioPci::rebind_vector(uint16_t v, int fd) {
  if (v >= vector_bound_.size()) return Errc::kVfioIrqBad;
  if (Status s = dev_->set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, v, std::span(&fd, 1)); !s.ok()) return s;
  vector_bound_[v] = fd;
  return {};
}

Status VirtioPci::enable_queue(uint16_t q, uint16_t size, uint64_t desc, uint64_t avail,
                               uint64_t used) {
  auto max = queue_max_size(q);
  if (!max.ok()) return max.error();
  if (max.value() == 0 || size == 0 || size > max.value() || (size & (size - 1)) != 0)
    return Errc::kVirtioQueueUnavailable;
  w16(VIRTIO_PCI_COMMON_Q_SELECT, q);
  w16(VIRTIO_PCI_COMMON_Q_SIZE, size);
  w32(VIRTIO_PCI_COMMON_Q_DESCLO, static_cast<uint32_t>(desc));
  w32(VIRTIO_PCI_COMMON_Q_DESCHI, static_cast<uint32_t>(desc >> 32));
  w32(VIRTIO_PCI_COMMON_Q_AVAILLO, static_cast<uint32_t>(avail));
  w32(VIRTIO_PCI_COMMON_Q_AVAILHI, static_cast<uint32_t>(avail >> 32));
  w32(VIRTIO_PCI_COMMON_Q_USEDLO, static_cast<uint32_t>(used));
  w32(VIRTIO_PCI_COMMON_Q_USEDHI, static_cast<uint32_t>(used >> 32));
  uint16_t noff = c16(VIRTIO_PCI_COMMON_Q_NOFF);
  // The notify address must lie inside the notify window (4.1.4.4).
  uint64_t at = uint64_t{noff} * caps_.notify_off_multiplier;
  if (at + 2 > caps_.notify.length) return Errc::kVirtioNoCap;
  w16(VIRTIO_PCI_COMMON_Q_ENABLE, 1);
  if (q < notify_off_.size()) notify_off_[q] = noff;
  return {};
}

Status VirtioPci::driver_ok() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  w8(VIRTIO_PCI_COMMON_STATUS, static_cast<uint8_t>(status() | VIRTIO_CONFIG_S_DRIVER_OK));
  if (status() & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED)) return Errc::kVirtioDeviceFailed;
  return {};
}

void VirtioPci::notify(uint16_t q) noexcept {
  if (q >= notify_off_.size() || notify_off_[q] == UINT16_MAX) return;
  // Ring writes before the doorbell.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint64_t at = uint64_t{notify_off_[q]} * caps_.notify_off_multiplier;
  *reinterpret_cast<volatile uint16_t*>(window(caps_.notify) + at) = q;
}

Status VirtioPci::read_config(uint32_t off, std::span<uint32_t> words) {
  const uint64_t len = uint64_t{4} * words.size();
  if (!caps_.device.present || off > caps_.device.length || caps_.device.length - off < len)
    return Errc::kConfigOutOfRange;
  // Every word under one config_generation (4.1.3.1).
  for (int tries = 0; tries < 100; ++tries) {
    uint8_t gen = c8(VIRTIO_PCI_COMMON_CFGGENERATION);
    for (size_t i = 0; i < words.size(); ++i)
      words[i] = rd<uint32_t>(caps_.device, off + static_cast<uint32_t>(4 * i));
    if (c8(VIRTIO_PCI_COMMON_CFGGENERATION) == gen) return {};
  }
  return Errc::kVirtioDeviceFailed;
}

Result<uint32_t> VirtioPci::config_read32(uint32_t off) {
  uint32_t w = 0;
  if (Status s = read_config(off, std::span(&w, 1)); !s.ok()) return s.error();
  return w;
}

Result<uint64_t> VirtioPci::config_read64(uint32_t off) {
  uint32_t w[2] = {};
  if (Status s = read_config(off, w); !s.ok()) return s.error();
  return uint64_t{w[0]} | (uint64_t{w[1]} << 32);
}

Result<std::vector<uint8_t>> VirtioPci::config_snapshot(uint32_t max_len) {
  std::vector<uint32_t> words(std::min(caps_.device.length, max_len) / 4);
  if (Status s = read_config(0, words); !s.ok()) return s.error();
  std::vector<uint8_t> bytes(words.size() * 4);
  std::memcpy(bytes.data(), words.data(), bytes.size());
  return bytes;
}

}  // namespace sluice::vfio
