// VFIO type1 containers and groups (RAII over the syscall seam).
//
// Order, as the kernel wants it: open a container, open a group and check it
// is viable, attach the group (VFIO_GROUP_SET_CONTAINER), and with the first
// group choose the IOMMU (TYPE1v2, else TYPE1) and read its info. Devices are
// opened from a group attached to a container.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "dataplane/base/result.h"
#include "vfio/info.h"
#include "vfio/kernel.h"

namespace sluice::vfio {

class Device;

class Container {
 public:
  // Opens /dev/vfio/vfio and checks the API version and type1 support.
  static Result<std::unique_ptr<Container>> open(Kernel& k = Kernel::real());

  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;

  // The IOMMU chosen when the first group was attached (VFIO_TYPE1v2_IOMMU or
  // VFIO_TYPE1_IOMMU); 0 before.
  uint32_t iommu_type() const noexcept { return iommu_type_; }
  bool ready() const noexcept { return iommu_type_ != 0; }
  // The info read when the IOMMU was set (page sizes, ranges, DMA_AVAIL then).
  const IommuInfo& info() const noexcept { return info_; }
  // Reads the info again (DMA_AVAIL now).
  Result<IommuInfo> query_info();
  bool has_unmap_all() const noexcept { return unmap_all_; }

  Status map_dma(uint64_t vaddr, uint64_t iova, uint64_t size);
  // Returns the bytes the kernel unmapped.
  Result<uint64_t> unmap_dma(uint64_t iova, uint64_t size);
  // VFIO_DMA_UNMAP_FLAG_ALL (Linux 5.12+); an error when not offered.
  Status unmap_all();

  Kernel& kernel() noexcept { return *k_; }
  int fd() const noexcept { return fd_.get(); }

 private:
  friend class Group;
  explicit Container(Kernel& k, KFd fd) : k_(&k), fd_(std::move(fd)) {}
  Status set_iommu();

  Kernel* k_;
  KFd fd_;
  uint32_t iommu_type_ = 0;
  bool unmap_all_ = false;
  IommuInfo info_;
};

class Group {
 public:
  // Opens /dev/vfio/N; refuses a group that is not viable (one of its devices
  // is still bound to a host driver).
  static Result<std::unique_ptr<Group>> open(int number, Kernel& k = Kernel::real());

  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  // Attaches to the container; the first group sets the container's IOMMU.
  Status attach(Container& c);
  // A device of this group by its name (PCI address "0000:00:05.0").
  Result<std::unique_ptr<Device>> open_device(const std::string& name);

  int number() const noexcept { return number_; }

 private:
  Group(Kernel& k, KFd fd, int number) : k_(&k), fd_(std::move(fd)), number_(number) {}
  Kernel* k_;
  KFd fd_;
  int number_;
  Container* container_ = nullptr;
};

// The IOMMU group number of a PCI device (/sys/bus/pci/devices/ADDR/iommu_group).
Result<int> iommu_group_of(const std::string& pci_addr);

}  // namespace sluice::vfio
