// A virtio-blk device behind VFIO as the backend of a Sluice blk export
// (`--blk path=...,vfio=ADDR`): Sluice's workers serve the front-end's
// queues, and each request goes to the hardware as the very descriptors the
// guest gave, with no copy and no bounce. That works because the session's
// guest memory is mapped into the device's IOMMU domain at IOVA = guest
// physical address (the memory listener), so a guest buffer's guest address
// is already a device address: the header, data and status buffers pass
// through, and the device writes the status byte into guest memory itself.
//
// Front-end queue i is served by device queue i (one vector each); the
// worker waits on that queue's MSI-X eventfd through io_uring when only
// device I/O is in flight. A chain the device ring cannot hold, or a buffer
// outside guest memory, completes with VIRTIO_BLK_S_IOERR and never reaches
// the device.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "dataplane/device/virtio_device.h"
#include "dataplane/worker/queue_set.h"
#include "dataplane/worker/worker.h"
#include "vfio/virtio_blk.h"

namespace sluice::vfio {

struct PassthroughQueueStats {
  std::atomic<uint64_t> requests{0}, errors{0}, device_irqs{0};
};

class PassthroughQueue;

class PassthroughBlkDevice final : public VirtioDevice {
 public:
  // Starts the hardware (VirtioBlkDriver, its rings in an arena at
  // `arena_iova`, which must not collide with guest memory) and serves up to
  // its queue count on `workers`.
  static Result<std::unique_ptr<PassthroughBlkDevice>> open(Device& dev, DmaMapper& mapper,
                                                            std::vector<Worker*> workers,
                                                            uint64_t arena_iova);
  ~PassthroughBlkDevice() override;

  uint32_t device_id() const override { return 2; }
  uint64_t device_features() const override { return offered_; }
  uint16_t max_queues() const override { return nq_; }
  uint16_t max_queue_size() const override { return 1024; }
  std::span<const uint8_t> config() const override { return config_; }
  Status write_config(uint32_t offset, std::span<const uint8_t> data) override;
  void set_driver_features(uint64_t f) override { driver_features_ = f; }
  Status queue_started(const QueueBinding& b) override;
  void queue_stopped(uint16_t index) override;
  uint32_t abandoned_queues() const override { return queues_.abandoned(); }
  void call_fd_changed(uint16_t index, int call_fd) override;
  void reset() override;

  VirtioBlkDriver& driver() noexcept { return *drv_; }
  const PassthroughQueueStats& stats(uint16_t q) const { return *stats_[q]; }
  uint64_t capacity_bytes() const noexcept;

 private:
  friend class PassthroughQueue;
  PassthroughBlkDevice() = default;
  std::unique_ptr<VirtioBlkDriver> drv_;
  uint16_t nq_ = 0;
  uint64_t offered_ = 0, driver_features_ = 0;
  std::vector<uint8_t> config_;
  WorkerQueues<PassthroughQueue> queues_;
  std::vector<std::unique_ptr<PassthroughQueueStats>> stats_;
};

}  // namespace sluice::vfio
