// A userspace virtio-pci (modern, virtio 1.2 section 4.1) transport driver
// over a VFIO device: the virtio capabilities parsed from config space, the
// BAR windows mapped, reset, feature negotiation, queue setup with rings in
// DMA-mapped memory, DRIVER_OK, notifications, and MSI-X vectors.
//
// Vectors follow Linux's vp_find_vqs(): one vector per queue plus one for
// configuration changes; if the device cannot give that, one vector for
// configuration and one shared by every queue; if not even that, none (the
// queues are polled). Every vector written to queue_msix_vector or
// config_msix_vector is read back: VIRTIO_MSI_NO_VECTOR (0xffff) means the
// device refused the mapping, and the next rung is tried. The MSI-X table
// size from the capability bounds every vector number. Queues that want no
// interrupt get NO_VECTOR explicitly.
//
// The device is not trusted further than it must be: capability offsets and
// lengths are checked against config space and the BAR sizes; a notify
// address outside its window is never written.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "vfio/device.h"

namespace sluice::vfio {

inline constexpr uint16_t kVirtioMsiNoVector = 0xffff;

struct VirtioCapRef {
  bool present = false;
  uint8_t bar = 0;
  uint32_t offset = 0;
  uint32_t length = 0;
};

struct VirtioPciCaps {
  VirtioCapRef common, notify, isr, device;
  uint32_t notify_off_multiplier = 0;
  bool msix = false;
  uint16_t msix_table_size = 0;  // entries (the capability's N-1 field plus one)
};

// Parses the capability list of a config space snapshot (at least the first
// 256 bytes). Loops, pointers into the header or past the end, and short
// capabilities are refused; the first capability of each virtio type wins
// (4.1.4), ones naming a reserved BAR are ignored.
Result<VirtioPciCaps> parse_virtio_pci_caps(std::span<const uint8_t> cfg);

enum class VectorPolicy : uint8_t {
  kPerQueue,  // config vector 0, queue i on vector i + 1
  kShared,    // config vector 0, every queue on vector 1
  kNone,      // no interrupts: the queues are polled
};
std::string_view vector_policy_name(VectorPolicy p) noexcept;

class VirtioPci {
 public:
  // Reads config space, parses the capabilities and maps the BARs they use.
  static Result<std::unique_ptr<VirtioPci>> open(Device& dev);
  VirtioPci(const VirtioPci&) = delete;
  VirtioPci& operator=(const VirtioPci&) = delete;
  ~VirtioPci();

  const VirtioPciCaps& caps() const noexcept { return caps_; }
  Device& device() noexcept { return *dev_; }

  // Writes 0 to device_status and waits (bounded) until it reads back 0.
  Status reset();
  uint8_t status() const noexcept;
  // Status ACKNOWLEDGE | DRIVER, then accepts device features & (wanted |
  // VERSION_1 | ACCESS_PLATFORM), sets FEATURES_OK and checks the device kept
  // it. VERSION_1 is required. Returns the accepted set.
  Result<uint64_t> negotiate(uint64_t wanted);
  uint64_t device_features() noexcept;
  uint16_t num_queues() const noexcept;
  // The device's largest size for queue q (0: the queue does not exist).
  Result<uint16_t> queue_max_size(uint16_t q);

  // Programs interrupt vectors for queues 0..wants.size()-1 down the ladder
  // and binds each vector used to an eventfd through VFIO. Call after
  // negotiate(), before enable_queue(). Returns the policy in force.
  Result<VectorPolicy> setup_vectors(std::span<const bool> wants_irq);
  VectorPolicy policy() const noexcept { return policy_; }
  // The vector queue q / configuration changes signal (read back from the
  // device), or kVirtioMsiNoVector.
  uint16_t queue_vector(uint16_t q) const noexcept;
  uint16_t config_vector() const noexcept { return config_vector_; }
  // The eventfd a vector fires, or -1.
  int vector_eventfd(uint16_t vector) const noexcept;
  int queue_eventfd(uint16_t q) const noexcept { return vector_eventfd(queue_vector(q)); }
  // Replaces vector v's eventfd (the offload use: the VMM's call fd). The
  // previous one is closed if we made it.
  Status rebind_vector(uint16_t v, int fd);

  // Sets size and ring IOVAs of queue q and enables it.
  Status enable_queue(uint16_t q, uint16_t size, uint64_t desc, uint64_t avail, uint64_t used);
  Status driver_ok();
  // Writes the queue index to the queue's notify address.
  void notify(uint16_t q) noexcept;

  // Device-specific configuration, read consistently (config_generation).
  Result<uint64_t> config_read64(uint32_t off);
  Result<uint32_t> config_read32(uint32_t off);
  // The first max_len bytes (whole words) of device config, in one generation.
  Result<std::vector<uint8_t>> config_snapshot(uint32_t max_len);

 private:
  explicit VirtioPci(Device& dev) : dev_(&dev) {}
  void teardown_vectors() noexcept;
  Status read_config(uint32_t off, std::span<uint32_t> words);
  bool try_rung(VectorPolicy p, std::span<const bool> wants);
  volatile uint8_t* window(const VirtioCapRef& c) const noexcept;
  template <class T>
  T rd(const VirtioCapRef& c, uint32_t off) const noexcept;
  template <class T>
  void wr(const VirtioCapRef& c, uint32_t off, T v) noexcept;
  uint8_t c8(uint32_t off) const noexcept;
  uint16_t c16(uint32_t off) const noexcept;
  uint32_t c32(uint32_t off) const noexcept;
  void w8(uint32_t off, uint8_t v) noexcept;
  void w16(uint32_t off, uint16_t v) noexcept;
  void w32(uint32_t off, uint32_t v) noexcept;

  Device* dev_;
  VirtioPciCaps caps_;
  MappedBar bars_[6];
  VectorPolicy policy_ = VectorPolicy::kNone;
  uint16_t config_vector_ = kVirtioMsiNoVector;
  std::vector<uint16_t> queue_vectors_;
  std::vector<UniqueFd> vector_fds_;  // ours (eventfds we created)
  std::vector<int> vector_bound_;     // what each vector is bound to now
  std::vector<uint16_t> notify_off_;  // per enabled queue
};

}  // namespace sluice::vfio
