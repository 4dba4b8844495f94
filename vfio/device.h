// A VFIO device (vfio-pci): regions and their mmap, PCI config space, MSI /
// MSI-X interrupts on eventfds, reset. Every access goes through the Kernel
// seam; every index, offset and vector count is checked against what the
// device reported before the kernel sees it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dataplane/base/result.h"
#include "vfio/kernel.h"

namespace sluice::vfio {

struct RegionInfo {
  uint32_t index = 0;
  uint32_t flags = 0;  // VFIO_REGION_INFO_FLAG_*
  uint64_t size = 0;
  uint64_t offset = 0;  // of the region inside the device fd
  bool mappable() const noexcept;
};

struct IrqInfo {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint32_t count = 0;  // vectors this index offers (MSI-X: the table size)
};

// A region mapped into our address space (a BAR); unmapped through the seam.
class MappedBar {
 public:
  MappedBar() = default;
  MappedBar(Kernel& k, void* p, size_t len) : k_(&k), p_(p), len_(len) {}
  MappedBar(MappedBar&& o) noexcept;
  MappedBar& operator=(MappedBar&& o) noexcept;
  ~MappedBar();
  volatile uint8_t* data() const noexcept { return static_cast<volatile uint8_t*>(p_); }
  size_t size() const noexcept { return len_; }
  // 32-bit MMIO at a checked offset; out-of-range reads give all ones, the
  // way a PCI read of nothing does, and writes are dropped.
  uint8_t read8(size_t off) const noexcept;
  void write8(size_t off, uint8_t v) noexcept;
  uint16_t read16(size_t off) const noexcept;
  void write16(size_t off, uint16_t v) noexcept;
  uint32_t read32(size_t off) const noexcept;
  void write32(size_t off, uint32_t v) noexcept;
  uint64_t read64(size_t off) const noexcept;
  void write64(size_t off, uint64_t v) noexcept;

 private:
  Kernel* k_ = nullptr;
  void* p_ = nullptr;
  size_t len_ = 0;
};

class Device {
 public:
  static Result<std::unique_ptr<Device>> adopt(Kernel& k, KFd fd, std::string name);

  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device();

  const std::string& name() const noexcept { return name_; }
  uint32_t num_regions() const noexcept { return num_regions_; }
  uint32_t num_irqs() const noexcept { return num_irqs_; }
  bool is_pci() const noexcept { return pci_; }
  bool can_reset() const noexcept { return reset_; }

  Result<RegionInfo> region(uint32_t index);
  Result<MappedBar> map_region(uint32_t index);
  // Reads/writes inside one region through the device fd (pread/pwrite).
  Status region_read(uint32_t index, uint64_t off, std::span<std::byte> out);
  Status region_write(uint32_t index, uint64_t off, std::span<const std::byte> in);

  // PCI config space (vfio-pci's config region).
  Result<uint16_t> config_read16(uint32_t off);
  Result<uint32_t> config_read32(uint32_t off);
  Status config_write16(uint32_t off, uint16_t v);
  // Sets Memory Space and Bus Master in the command register.
  Status enable_bus_master();

  Result<IrqInfo> irq(uint32_t index);
  // Binds vectors start..start+fds.size()-1 of an interrupt index to
  // eventfds (-1 leaves that vector unbound).
  Status set_irq_eventfds(uint32_t index, uint32_t start, std::span<const int> fds);
  // Tears down every vector of an index.
  Status disable_irqs(uint32_t index);
  Status reset();

 private:
  Device(Kernel& k, KFd fd, std::string name) : k_(&k), fd_(std::move(fd)), name_(std::move(name)) {}
  template <class T>
  Result<T> config_read(uint32_t off);
  Kernel* k_;
  KFd fd_;
  std::string name_;
  uint32_t num_regions_ = 0, num_irqs_ = 0;
  bool pci_ = false, reset_ = false;
  std::vector<uint32_t> irqs_enabled_;  // indexes with vectors bound (torn down on close)
  std::vector<std::optional<RegionInfo>> regions_;  // cache: region info does not change
};

}  // namespace sluice::vfio
