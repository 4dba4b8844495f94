#include "vfio/container.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/base/log.h"
#include "vfio/device.h"

namespace sluice::vfio {

namespace {

void* as_arg(unsigned long v) { return reinterpret_cast<void*>(v); }

Error sys(int neg_errno) { return Error::from_errno(-neg_errno); }

}  // namespace

Result<std::unique_ptr<Container>> Container::open(Kernel& k) {
  int fd = k.open("/dev/vfio/vfio", O_RDWR);
  if (fd < 0) return sys(fd);
  KFd kfd(k, fd);
  if (k.ioctl(fd, VFIO_GET_API_VERSION, nullptr) != VFIO_API_VERSION) return Errc::kVfioApiVersion;
  if (k.ioctl(fd, VFIO_CHECK_EXTENSION, as_arg(VFIO_TYPE1v2_IOMMU)) <= 0 &&
      k.ioctl(fd, VFIO_CHECK_EXTENSION, as_arg(VFIO_TYPE1_IOMMU)) <= 0)
    return Errc::kVfioNoType1;
  return std::unique_ptr<Container>(new Container(k, std::move(kfd)));
}

Status Container::set_iommu() {
  uint32_t type = k_->ioctl(fd_.get(), VFIO_CHECK_EXTENSION, as_arg(VFIO_TYPE1v2_IOMMU)) > 0
                      ? VFIO_TYPE1v2_IOMMU
                      : VFIO_TYPE1_IOMMU;
  if (int r = k_->ioctl(fd_.get(), VFIO_SET_IOMMU, as_arg(type)); r < 0) return sys(r);
  iommu_type_ = type;
  unmap_all_ = k_->ioctl(fd_.get(), VFIO_CHECK_EXTENSION, as_arg(VFIO_UNMAP_ALL)) > 0;
  auto info = query_info();
  if (!info.ok()) {
    iommu_type_ = 0;
    return info.error();
  }
  info_ = std::move(info.value());
  return {};
}

Result<IommuInfo> Container::query_info() {
  // Ask with a small buffer; the kernel says in argsz how much it needs.
  std::vector<std::byte> buf(sizeof(vfio_iommu_type1_info));
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::memset(buf.data(), 0, buf.size());
    auto argsz = static_cast<uint32_t>(buf.size());
    std::memcpy(buf.data(), &argsz, sizeof argsz);
    if (int r = k_->ioctl(fd_.get(), VFIO_IOMMU_GET_INFO, buf.data()); r < 0) return sys(r);
    uint32_t need;
    std::memcpy(&need, buf.data(), sizeof need);
    if (need <= buf.size()) return parse_iommu_info(buf);
    if (need > kMaxInfoBytes) return Errc::kVfioInfoMalformed;
    buf.resize(need);
  }
  return Errc::kVfioInfoMalformed;  // argsz kept growing
}

Status Container::map_dma(uint64_t vaddr, uint64_t iova, uint64_t size) {
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  m.vaddr = vaddr;
  m.iova = iova;
  m.size = size;
  if (int r = k_->ioctl(fd_.get(), VFIO_IOMMU_MAP_DMA, &m); r < 0) return sys(r);
  return {};
}

Result<uint64_t> Container::unmap_dma(uint64_t iova, uint64_t size) {
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.iova = iova;
  u.size = size;
  if (int r = k_->ioctl(fd_.get(), VFIO_IOMMU_UNMAP_DMA, &u); r < 0) return sys(r);
  return static_cast<uint64_t>(u.size);
}

Status Container::unmap_all() {
  if (!unmap_all_) return Error::from_errno(ENOTSUP);
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.flags = VFIO_DMA_UNMAP_FLAG_ALL;
  if (int r = k_->ioctl(fd_.get(), VFIO_IOMMU_UNMAP_DMA, &u); r < 0) return sys(r);
  return {};
}

Result<std::unique_ptr<Group>> Group::open(int number, Kernel& k) {
  if (number < 0) return Errc::kInvalidArgument;
  std::string path = "/dev/vfio/" + std::to_string(number);
  int fd = k.open(path.c_str(), O_RDWR);
  if (fd < 0) return sys(fd);
  KFd kfd(k, fd);
  vfio_group_status st{};
  st.argsz = sizeof st;
  if (int r = k.ioctl(fd, VFIO_GROUP_GET_STATUS, &st); r < 0) return sys(r);
  if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) return Errc::kVfioGroupNotViable;
  return std::unique_ptr<Group>(new Group(k, std::move(kfd), number));
}

Status Group::attach(Container& c) {
  if (container_ != nullptr) return container_ == &c ? Status{} : Status(Errc::kInvalidArgument);
  int cfd = c.fd();
  if (int r = k_->ioctl(fd_.get(), VFIO_GROUP_SET_CONTAINER, &cfd); r < 0) return sys(r);
  container_ = &c;
  if (!c.ready()) return c.set_iommu();
  return {};
}

Result<std::unique_ptr<Device>> Group::open_device(const std::string& name) {
  if (container_ == nullptr || !container_->ready()) return Errc::kQueueNotReady;
  std::vector<char> n(name.begin(), name.end());
  n.push_back('\0');
  int fd = k_->ioctl(fd_.get(), VFIO_GROUP_GET_DEVICE_FD, n.data());
  if (fd < 0) return sys(fd);
  return Device::adopt(*k_, KFd(*k_, fd), name);
}

Result<int> iommu_group_of(const std::string& pci_addr) {
  if (pci_addr.empty() || pci_addr.find('/') != std::string::npos) return Errc::kInvalidArgument;
  std::string link = "/sys/bus/pci/devices/" + pci_addr + "/iommu_group";
  char target[PATH_MAX];
  ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  if (n < 0) return Error::from_errno(errno);
  target[n] = '\0';
  const char* base = std::strrchr(target, '/');
  base = base ? base + 1 : target;
  char* end = nullptr;
  long g = std::strtol(base, &end, 10);
  if (end == base || *end != '\0' || g < 0 || g > INT_MAX) return Errc::kInvalidArgument;
  return static_cast<int>(g);
}

}  // namespace sluice::vfio
