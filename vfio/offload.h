// Queue offload (vDPA-style, through VFIO): a vhost-user device whose queues
// are run by a virtio-pci device behind VFIO instead of by Sluice's workers.
//
// The vhost-user session drives it like any VirtioDevice. Features offered to
// the front-end are the hardware's (device-specific and ring bits); the
// front-end's choice is negotiated with the hardware. When a queue starts,
// its ring addresses (guest physical = IOVA: the session's memory is mapped
// into the device's container by the memory listener) are programmed into
// the device queue, and the queue's MSI-X vector is bound with
// VFIO_DEVICE_SET_IRQS to the very call eventfd the VMM gave. In QEMU that fd
// is a KVM irqfd, so the kernel can pair the device's interrupt with the
// guest's directly (IRQ bypass: posted interrupts / GICv4 vLPIs). Kicks from
// the front-end's kick eventfds are relayed to the device's notify area by
// one small thread; nothing else of Sluice runs per request.
//
// Limits of a plain virtio-pci device (no vendor interface): a ring can only
// start at index 0 on a freshly reset device, and its position is read back
// from the used ring once it is idle (GET_VRING_BASE waits, bounded, for
// requests in flight). A ring restarted where it stopped (a re-sent memory
// table) simply continues.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "dataplane/device/virtio_device.h"
#include "vfio/virtio_pci.h"

namespace sluice::vfio {

struct OffloadQueueStats {
  bool running = false;
  uint16_t vector = kVirtioMsiNoVector;
  int call_fd = -1;  // the eventfd the device's vector fires (the VMM's)
  uint64_t kicks = 0;
};

class VirtioOffloadDevice final : public VirtioDevice {
 public:
  // Takes over `dev` (a virtio-pci device): resets it and reads what it offers.
  static Result<std::unique_ptr<VirtioOffloadDevice>> open(Device& dev);
  ~VirtioOffloadDevice() override;

  uint32_t device_id() const override { return device_id_; }
  uint64_t device_features() const override { return offered_; }
  uint16_t max_queues() const override { return nqueues_; }
  uint16_t max_queue_size() const override { return max_size_; }
  std::span<const uint8_t> config() const override { return config_; }
  Status write_config(uint32_t offset, std::span<const uint8_t> data) override;
  void set_driver_features(uint64_t features) override;
  Status queue_started(const QueueBinding& b) override;
  void queue_stopped(uint16_t index) override;
  std::optional<uint16_t> stopped_base(uint16_t index) override;
  uint32_t abandoned_queues() const override { return abandoned_.load(std::memory_order_relaxed); }
  void call_fd_changed(uint16_t index, int call_fd) override;
  void reset() override;

  VirtioPci& pci() noexcept { return *pci_; }
  OffloadQueueStats queue_stats(uint16_t q) const;
  // The device's features as the hardware offered them (for the API).
  uint64_t hardware_features() const noexcept { return hw_features_; }

 private:
  struct Q {
    bool enabled = false;  // programmed into the device
    bool running = false;  // a session runs it now
    uint64_t desc = 0, avail = 0, used = 0;
    uint16_t size = 0;
    int kick_fd = -1, call_fd = -1;
    std::shared_ptr<const MemoryTable> mem;  // keeps the rings mapped while we read them
    std::byte* used_host = nullptr;
    std::byte* avail_host = nullptr;
    std::optional<uint16_t> stopped_at;
    std::atomic<uint64_t> kicks{0};
  };
  VirtioOffloadDevice() = default;
  Status bring_up(uint64_t features);
  Status bind_call(uint16_t q, int fd);
  void relay();

  std::unique_ptr<VirtioPci> pci_;
  uint32_t device_id_ = 0;
  uint64_t hw_features_ = 0, offered_ = 0, driver_features_ = 0;
  bool negotiated_ = false, driver_ok_ = false;
  Error pending_{};  // a set_driver_features() failure, reported by queue_started()
  uint16_t nqueues_ = 0, max_size_ = 0;
  std::vector<uint8_t> config_;
  std::unique_ptr<Q[]> q_;
  std::vector<UniqueFd> spare_;  // our eventfds for vectors with no call fd
  UniqueFd epoll_, stop_;
  std::thread relay_;
  std::atomic<uint32_t> abandoned_{0};  // queues stopped with requests still on the device
};

}  // namespace sluice::vfio
