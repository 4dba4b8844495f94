#include "vfio/device.h"

#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

namespace sluice::vfio {

namespace {
Error sys(long neg_errno) { return Error::from_errno(static_cast<int>(-neg_errno)); }
}  // namespace

bool RegionInfo::mappable() const noexcept { return (flags & VFIO_REGION_INFO_FLAG_MMAP) && size > 0; }

MappedBar::MappedBar(MappedBar&& o) noexcept
    : k_(o.k_), p_(std::exchange(o.p_, nullptr)), len_(std::exchange(o.len_, 0)) {}
MappedBar& MappedBar::operator=(MappedBar&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) (void)k_->munmap(p_, len_);
    k_ = o.k_;
    p_ = std::exchange(o.p_, nullptr);
    len_ = std::exchange(o.len_, 0);
  }
  return *this;
}
MappedBar::~MappedBar() {
  if (p_ != nullptr) (void)k_->munmap(p_, len_);
}
uint8_t MappedBar::read8(size_t off) const noexcept {
  if (p_ == nullptr || off >= len_) return UINT8_MAX;
  return *(data() + off);
}
void MappedBar::write8(size_t off, uint8_t v) noexcept {
  if (p_ == nullptr || off >= len_) return;
  *(data() + off) = v;
}
uint16_t MappedBar::read16(size_t off) const noexcept {
  if (p_ == nullptr || off % 2 != 0 || off + 2 > len_) return UINT16_MAX;
  return *reinterpret_cast<volatile uint16_t*>(data() + off);
}
void MappedBar::write16(size_t off, uint16_t v) noexcept {
  if (p_ == nullptr || off % 2 != 0 || off + 2 > len_) return;
  *reinterpret_cast<volatile uint16_t*>(data() + off) = v;
}
uint32_t MappedBar::read32(size_t off) const noexcept {
  if (p_ == nullptr || off % 4 != 0 || off + 4 > len_) return UINT32_MAX;
  return *reinterpret_cast<volatile uint32_t*>(data() + off);
}
void MappedBar::write32(size_t off, uint32_t v) noexcept {
  if (p_ == nullptr || off % 4 != 0 || off + 4 > len_) return;
  *reinterpret_cast<volatile uint32_t*>(data() + off) = v;
}
uint64_t MappedBar::read64(size_t off) const noexcept {
  if (p_ == nullptr || off % 8 != 0 || off + 8 > len_) return UINT64_MAX;
  return *reinterpret_cast<volatile uint64_t*>(data() + off);
}
void MappedBar::write64(size_t off, uint64_t v) noexcept {
  if (p_ == nullptr || off % 8 != 0 || off + 8 > len_) return;
  *reinterpret_cast<volatile uint64_t*>(data() + off) = v;
}

Result<std::unique_ptr<Device>> Device::adopt(Kernel& k, KFd fd, std::string name) {
  vfio_device_info info{};
  info.argsz = sizeof info;
  if (int r = k.ioctl(fd.get(), VFIO_DEVICE_GET_INFO, &info); r < 0) return sys(r);
  std::unique_ptr<Device> d(new Device(k, std::move(fd), std::move(name)));
  // Bounded: a device with thousands of regions is not one we understand.
  d->num_regions_ = std::min<uint32_t>(info.num_regions, 64);
  d->num_irqs_ = std::min<uint32_t>(info.num_irqs, 64);
  d->pci_ = (info.flags & VFIO_DEVICE_FLAGS_PCI) != 0;
  d->reset_ = (info.flags & VFIO_DEVICE_FLAGS_RESET) != 0;
  return d;
}

Device::~Device() {
  std::vector<uint32_t> enabled = irqs_enabled_;  // disable_irqs() edits the list
  for (uint32_t index : enabled) (void)disable_irqs(index);
}

Result<RegionInfo> Device::region(uint32_t index) {
  if (index >= num_regions_) return Errc::kVfioRegionBad;
  if (index < regions_.size() && regions_[index]) return *regions_[index];
  vfio_region_info ri{};
  ri.argsz = sizeof ri;
  ri.index = index;
  if (int r = k_->ioctl(fd_.get(), VFIO_DEVICE_GET_REGION_INFO, &ri); r < 0) return sys(r);
  uint64_t end;
  if (__builtin_add_overflow(ri.offset, ri.size, &end) || end > static_cast<uint64_t>(INT64_MAX))
    return Errc::kVfioRegionBad;
  RegionInfo info{index, ri.flags, ri.size, ri.offset};
  if (regions_.size() <= index) regions_.resize(index + 1);
  regions_[index] = info;
  return info;
}

Result<MappedBar> Device::map_region(uint32_t index) {
  auto ri = region(index);
  if (!ri.ok()) return ri.error();
  if (!ri->mappable()) return Errc::kVfioRegionBad;
  int prot = 0;
  if (ri->flags & VFIO_REGION_INFO_FLAG_READ) prot |= PROT_READ;
  if (ri->flags & VFIO_REGION_INFO_FLAG_WRITE) prot |= PROT_WRITE;
  int err = 0;
  void* p = k_->mmap(ri->size, prot, fd_.get(), static_cast<off_t>(ri->offset), &err);
  if (p == nullptr) return Error::from_errno(err);
  return MappedBar(*k_, p, ri->size);
}

Status Device::region_read(uint32_t index, uint64_t off, std::span<std::byte> out) {
  auto ri = region(index);
  if (!ri.ok()) return ri.error();
  if (!(ri->flags & VFIO_REGION_INFO_FLAG_READ) || off > ri->size || out.size() > ri->size - off)
    return Errc::kVfioRegionBad;
  ssize_t n = k_->pread(fd_.get(), out.data(), out.size(), static_cast<off_t>(ri->offset + off));
  if (n < 0) return sys(n);
  if (static_cast<size_t>(n) != out.size()) return Error::from_errno(EIO);
  return {};
}

Status Device::region_write(uint32_t index, uint64_t off, std::span<const std::byte> in) {
  auto ri = region(index);
  if (!ri.ok()) return ri.error();
  if (!(ri->flags & VFIO_REGION_INFO_FLAG_WRITE) || off > ri->size || in.size() > ri->size - off)
    return Errc::kVfioRegionBad;
  ssize_t n = k_->pwrite(fd_.get(), in.data(), in.size(), static_cast<off_t>(ri->offset + off));
  if (n < 0) return sys(n);
  if (static_cast<size_t>(n) != in.size()) return Error::from_errno(EIO);
  return {};
}

// PCI config space is little-endian, as is every host this builds for.
template <class T>
Result<T> Device::config_read(uint32_t off) {
  if (!pci_) return Errc::kVfioRegionBad;
  T v = 0;
  Status s = region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, std::as_writable_bytes(std::span(&v, 1)));
  if (!s.ok()) return s.error();
  return v;
}

Result<uint16_t> Device::config_read16(uint32_t off) { return config_read<uint16_t>(off); }
Result<uint32_t> Device::config_read32(uint32_t off) { return config_read<uint32_t>(off); }

Status Device::config_write16(uint32_t off, uint16_t v) {
  if (!pci_) return Errc::kVfioRegionBad;
  return region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, std::as_bytes(std::span(&v, 1)));
}

Status Device::enable_bus_master() {
  auto cmd = config_read16(PCI_COMMAND);
  if (!cmd.ok()) return cmd.error();
  return config_write16(PCI_COMMAND,
                        static_cast<uint16_t>(cmd.value() | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER));
}

Result<IrqInfo> Device::irq(uint32_t index) {
  if (index >= num_irqs_) return Errc::kVfioIrqBad;
  vfio_irq_info ii{};
  ii.argsz = sizeof ii;
  ii.index = index;
  if (int r = k_->ioctl(fd_.get(), VFIO_DEVICE_GET_IRQ_INFO, &ii); r < 0) return sys(r);
  return IrqInfo{index, ii.flags, ii.count};
}

Status Device::set_irq_eventfds(uint32_t index, uint32_t start, std::span<const int> fds) {
  auto ii = irq(index);
  if (!ii.ok()) return ii.error();
  if (!(ii->flags & VFIO_IRQ_INFO_EVENTFD) || fds.empty() || start > ii->count ||
      fds.size() > ii->count - start)
    return Errc::kVfioIrqBad;
  std::vector<std::byte> buf(sizeof(vfio_irq_set) + fds.size() * sizeof(int32_t));
  vfio_irq_set set{};
  set.argsz = static_cast<uint32_t>(buf.size());
  set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set.index = index;
  set.start = start;
  set.count = static_cast<uint32_t>(fds.size());
  std::memcpy(buf.data(), &set, sizeof set);
  std::memcpy(buf.data() + sizeof set, fds.data(), fds.size() * sizeof(int32_t));
  if (int r = k_->ioctl(fd_.get(), VFIO_DEVICE_SET_IRQS, buf.data()); r < 0) return sys(r);
  if (std::find(irqs_enabled_.begin(), irqs_enabled_.end(), index) == irqs_enabled_.end())
    irqs_enabled_.push_back(index);
  return {};
}

Status Device::disable_irqs(uint32_t index) {
  if (index >= num_irqs_) return Errc::kVfioIrqBad;
  vfio_irq_set set{};
  set.argsz = sizeof set;
  set.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
  set.index = index;
  set.start = 0;
  set.count = 0;
  if (int r = k_->ioctl(fd_.get(), VFIO_DEVICE_SET_IRQS, &set); r < 0) return sys(r);
  irqs_enabled_.erase(std::remove(irqs_enabled_.begin(), irqs_enabled_.end(), index),
                      irqs_enabled_.end());
  return {};
}

Status Device::reset() {
  if (!reset_) return Error::from_errno(ENOTTY);
  if (int r = k_->ioctl(fd_.get(), VFIO_DEVICE_RESET, nullptr); r < 0) return sys(r);
  return {};
}

}  // namespace sluice::vfio
