// Test seam (STYLE.md rule 14): a fake VFIO kernel behind vfio::Kernel that
// enforces the type1 rules the real one does, so containers, groups,
// devices, the DMA executor and the memory listener run in unit tests:
// - MAP_DMA: READ/WRITE flags, size != 0, vaddr/iova/size aligned to the
//   smallest iova_pgsizes bit, no wrap, inside one usable IOVA range
//   (EINVAL), no overlap with a mapping (EEXIST), at most DMA_AVAIL mappings
//   (ENOSPC), vaddr backed by our memory (EFAULT);
// - UNMAP_DMA (TYPE1v2): a range that splits a mapping is EINVAL; mappings
//   inside the range go and the unmapped size is returned; FLAG_ALL needs
//   iova = size = 0;
// - SET_IOMMU only with a group attached; GET_DEVICE_FD only once the
//   container has an IOMMU; GET_INFO with the argsz dance and capabilities.
// Fake fds are numbers no real fd has; they are closed through the seam.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "vfio/info.h"
#include "vfio/kernel.h"

namespace sluice::test {

struct FakeVfioConfig {
  uint64_t iova_pgsizes = 0x40201000;  // 4 KiB, 2 MiB, 1 GiB (seen under QEMU's VT-d)
  // Usable IOVA with the x86 MSI hole at 0xfee00000-0xfeefffff.
  std::vector<vfio::IovaRange> ranges = {{0, 0xfedfffff}, {0xfef00000, (uint64_t{1} << 39) - 1}};
  uint32_t dma_avail = 65535;  // the type1 default (dma_entry_limit)
  bool type1v2 = true;
  bool unmap_all = true;
  bool report_caps = true;  // IOVA_RANGE, MIGRATION, DMA_AVAIL capabilities
};

struct FakeMapping {
  uint64_t vaddr, iova, size;
};

// A modern virtio-pci device's registers, behind BAR 4 of a FakeDevice
// (common config at 0x0, ISR at 0x1000, device config at 0x2000, notify at
// 0x3000 with multiplier 4), reached through pread/pwrite on the BAR region
// as the driver does. Behaves as QEMU's: reset clears status, queue state and
// every vector; a vector the device cannot honour reads back 0xffff.
struct FakeVirtio {
  uint64_t features = (uint64_t{1} << 32) | (uint64_t{1} << 33);  // VERSION_1 | ACCESS_PLATFORM
  uint16_t num_queues = 2;
  uint16_t queue_max = 256;
  uint16_t msix_table = 3;         // 0: no MSI-X capability at all
  uint16_t refuse_vectors_from = 0xffff;  // vectors >= this are refused (out of resources)
  bool refuse_features_ok = false;
  uint16_t notify_off_step = 1;    // queue q's notify offset is q * step
  std::vector<uint8_t> device_config = std::vector<uint8_t>(64, 0);
  // Registers.
  uint8_t status = 0;
  uint32_t dfselect = 0, gfselect = 0;
  uint64_t driver_features = 0;
  uint16_t config_vector = 0xffff;
  uint16_t queue_select = 0;
  uint8_t generation = 0;
  int resets = 0;
  struct Queue {
    uint16_t size = 0, vector = 0xffff, enable = 0;
    uint64_t desc = 0, avail = 0, used = 0;
  };
  std::vector<Queue> queues;
};

struct FakeDevice {
  std::string name;
  std::vector<uint8_t> config = std::vector<uint8_t>(256, 0);
  void* bar0 = nullptr;  // page-aligned, bar0_size bytes
  size_t bar0_size = 4096;
  void* bar4 = nullptr;  // virtio devices: 16 KiB of registers (the notify page is read by tests)
  std::unique_ptr<FakeVirtio> virtio;
  uint32_t msi_count = 1;
  uint32_t msix_count = 8;
  std::map<uint32_t, std::vector<int>> irq_fds;  // index -> fd per vector (-1 unbound), dup'ed
  int resets = 0;
  bool open = false;
};

class FakeVfio final : public vfio::Kernel {
 public:
  explicit FakeVfio(FakeVfioConfig cfg = {});
  ~FakeVfio() override;

  void add_group(int number, bool viable = true);
  FakeDevice& add_device(int group, const std::string& name);
  // A virtio-pci device (modern) with the given model; its config space
  // carries the virtio and MSI-X capabilities.
  FakeDevice& add_virtio_device(int group, const std::string& name, FakeVirtio model = {});

  // Kernel seam.
  int open(const char* path, int flags) override;
  int close(int fd) override;
  int ioctl(int fd, unsigned long request, void* arg) override;
  ssize_t pread(int fd, void* buf, size_t len, off_t off) override;
  ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) override;
  void* mmap(size_t len, int prot, int fd, off_t off, int* err) override;
  int munmap(void* addr, size_t len) override;

  // Fires vector `v` of interrupt `index` of a device (writes its eventfd).
  bool trigger(const std::string& device, uint32_t index, uint32_t v);

  // Observations: the mappings of the container behind `container_fd`
  // (empty for an unknown fd).
  const std::map<uint64_t, FakeMapping>& mappings(int container_fd) const;
  uint64_t map_calls = 0, unmap_calls = 0;
  size_t open_fds() const { return fds_.size(); }
  FakeVfioConfig& config() { return cfg_; }
  // Failure injection: the Nth MAP_DMA from now (0 = the next) fails with errno.
  int fail_map_at = -1;
  int fail_map_errno = EFAULT;
  // Rewrites the GET_INFO answer (malformed-capability tests).
  std::function<void(std::vector<std::byte>&)> info_hook;

 private:
  enum class Kind { kContainer, kGroup, kDevice };
  struct ContainerState {
    uint32_t iommu = 0;
    int groups = 0;
    std::map<uint64_t, FakeMapping> maps;  // by iova
  };
  struct Fd {
    Kind kind;
    std::shared_ptr<ContainerState> container;  // container fds
    int group = -1;       // group number (group fds)
    std::string device;   // device name (device fds)
  };
  struct Group {
    bool viable = true;
    bool open = false;
    std::shared_ptr<ContainerState> container;  // set by GROUP_SET_CONTAINER
  };
  int container_ioctl(ContainerState& c, unsigned long request, void* arg);
  int group_ioctl(Fd& f, unsigned long request, void* arg);
  int device_ioctl(FakeDevice& d, unsigned long request, void* arg);
  ssize_t virtio_access(FakeDevice& d, uint64_t off, void* buf, size_t len, bool write);
  int new_fd(Fd f);
  int get_info(ContainerState& c, void* arg);
  int map_dma(ContainerState& c, void* arg);
  int unmap_dma(ContainerState& c, void* arg);
  uint64_t min_page() const { return cfg_.iova_pgsizes & (~cfg_.iova_pgsizes + 1); }

  FakeVfioConfig cfg_;
  std::map<int, Fd> fds_;
  int next_fd_ = 1 << 20;
  std::map<int, Group> groups_;
  std::map<std::string, std::unique_ptr<FakeDevice>> devices_;
  std::map<std::string, int> device_group_;
};

}  // namespace sluice::test
