// A virtio-blk driver over VFIO (virtio-pci transport + the driver side of
// the split ring), with its rings, request headers and status bytes in a DMA
// arena. Requests are asynchronous (submit, then reap completions); data
// buffers are IOVAs the caller owns: arena memory, or guest memory that the
// DMA mapper put in the same container (zero copy).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/virtq/split_driver.h"
#include "vfio/dma_arena.h"
#include "vfio/virtio_pci.h"

namespace sluice::vfio {

struct VirtioBlkOptions {
  uint16_t queues = 1;        // at most what the device offers
  uint16_t queue_size = 64;   // at most the device's maximum
  bool interrupts = true;     // ask for MSI-X vectors (the ladder decides)
  // Device-specific features to accept when offered (besides MQ and FLUSH).
  uint64_t extra_features = 0;
  uint64_t arena_iova = 0x100000;
  uint64_t arena_bytes = 2u << 20;
};

struct BlkCompletion {
  uint64_t token;
  uint8_t status;  // VIRTIO_BLK_S_*
  uint32_t len;    // what the device reported writing
};

class VirtioBlkDriver {
 public:
  static Result<std::unique_ptr<VirtioBlkDriver>> start(Device& dev, DmaMapper& mapper,
                                                        const VirtioBlkOptions& opts);
  ~VirtioBlkDriver();

  uint64_t capacity_sectors() const noexcept { return capacity_; }
  uint64_t features() const noexcept { return features_; }
  uint16_t queues() const noexcept { return static_cast<uint16_t>(rings_.size()); }
  VirtioPci& pci() noexcept { return *pci_; }
  DmaArena& arena() noexcept { return *arena_; }

  // Queues a request of `type` (VIRTIO_BLK_T_IN/OUT/FLUSH/...) at `sector`
  // with data segments (IOVA, length); publishes and notifies when the
  // device asks to be kicked. kQueueFull when the ring has no room.
  Status submit(uint16_t q, uint32_t type, uint64_t sector, std::span<const virtq::DriverBuf> data,
                uint64_t token);
  // Takes completions from queue q. A device that breaks the ring's rules
  // makes the queue unusable (an error).
  Result<size_t> reap(uint16_t q, const std::function<void(const BlkCompletion&)>& fn);
  // Pass-through: adds a whole chain as the caller built it (header, data
  // and status buffers all IOVAs it owns) without publishing. kQueueFull
  // when the ring lacks room.
  Status add_raw(uint16_t q, std::span<const virtq::DriverBuf> bufs, uint64_t token);
  // Publishes what add_raw() added and rings the doorbell if the device asks.
  void kick(uint16_t q);
  // Takes pass-through completions: fn(token, len the device reported).
  Result<size_t> reap_raw(uint16_t q, const std::function<void(uint64_t, uint32_t)>& fn);
  uint16_t free_descs(uint16_t q) const noexcept { return q < rings_.size() ? rings_[q]->free_descs() : 0; }
  uint16_t queue_size(uint16_t q) const noexcept { return q < rings_.size() ? rings_[q]->size() : 0; }
  // Whether the device has returned buffers not yet reaped.
  bool has_used(uint16_t q) const noexcept;
  // Waits for queue q's interrupt (its eventfd), or polls when it has none.
  // Returns true if an interrupt arrived within timeout_ms.
  bool wait(uint16_t q, int timeout_ms);
  // Interrupts consumed so far on queue q's vector.
  uint64_t interrupts(uint16_t q) const noexcept { return q < irqs_.size() ? irqs_[q] : 0; }

 private:
  VirtioBlkDriver() = default;
  std::unique_ptr<VirtioPci> pci_;
  std::unique_ptr<DmaArena> arena_;
  std::vector<std::unique_ptr<virtq::SplitDriver>> rings_;
  std::vector<uint64_t> hdr_iova_;  // per queue: queue_size 16-byte headers
  std::vector<uint64_t> st_iova_;   // per queue: queue_size status bytes
  std::vector<uint64_t> irqs_;
  std::vector<uint16_t> last_seen_;  // used index after the last reap_raw()
  std::vector<std::vector<uint16_t>> free_slots_;  // per queue: header/status slots
  uint64_t capacity_ = 0, features_ = 0;
};

}  // namespace sluice::vfio
