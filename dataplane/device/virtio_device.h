// The contract between a device model (virtio-blk, virtio-net) and whatever
// transport feeds it queues: the vhost-user back-end today, a VFIO offload
// target later. Defined here, in dataplane/, so that vhost/ and vfio/ never
// need each other (../shared/DESIGN.md).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/split_queue.h"

namespace sluice {

// What a transport hands a device when a queue starts: the configured queue
// (already attached to the current guest memory and based), and the fds the
// front-end gave. The device owns none of these; the transport keeps them
// alive until queue_stopped() returns.
struct QueueBinding {
  uint16_t index = 0;
  virtq::SplitQueue* queue = nullptr;
  int kick_fd = -1;  // -1: the front-end gave none (polling only)
  int call_fd = -1;  // -1: raise no interrupts
  // This queue's inflight-tracking region (vhost-user INFLIGHT_SHMFD), or
  // null. The device records popped and completed heads in it and, on start,
  // resubmits what a previous back-end left in flight.
  std::byte* inflight = nullptr;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  // Device type (virtio 1.2 section 5), for logs and the API.
  virtual uint32_t device_id() const = 0;
  // Virtio feature bits the device offers (ring and transport bits included).
  virtual uint64_t device_features() const = 0;
  virtual uint16_t max_queues() const = 0;
  // What GET_QUEUE_NUM answers: virtqueues for most devices, queue pairs for
  // virtio-net (as QEMU and DPDK's virtio-user read it).
  virtual uint64_t queue_num() const { return max_queues(); }
  virtual uint16_t max_queue_size() const { return 1024; }
  // How an in-order queue reports completions: per buffer unless the device
  // knows the driver ignores the lengths of all but a batch's last buffer.
  virtual virtq::InOrderBatching batching(uint16_t /*queue*/) const {
    return virtq::InOrderBatching::kPerBuffer;
  }
  // Device-specific config space (virtio 1.2 section 4.1.4.6 onwards).
  virtual std::span<const uint8_t> config() const = 0;
  // A driver write into config space; most devices refuse most fields.
  virtual Status write_config(uint32_t offset, std::span<const uint8_t> data) = 0;
  // Features the driver accepted (a subset of device_features()).
  virtual void set_driver_features(uint64_t features) = 0;

  // The queue may now be served. Called on the control thread.
  virtual Status queue_started(const QueueBinding& b) = 0;
  // The queue must stop: when this returns, no worker touches it again and
  // every completion is pushed and flushed, or (requests that did not
  // complete within the worker's stop deadline: a hung file or device) the
  // queue was abandoned and abandoned_queues() counts it. Called on the
  // control thread.
  virtual void queue_stopped(uint16_t index) = 0;
  // Queues abandoned by queue_stopped() or reset() since the device was
  // made: the front-end's session is ended (its ring state is lost).
  virtual uint32_t abandoned_queues() const { return 0; }
  // After queue_stopped(): the avail index to report to GET_VRING_BASE when
  // the device, not the software queue, ran the ring (queue offload); none
  // means the software queue's own index.
  virtual std::optional<uint16_t> stopped_base(uint16_t /*index*/) { return std::nullopt; }
  // The call fd of a running queue changed (the guest masked/unmasked the
  // vector); -1 means no interrupts.
  virtual void call_fd_changed(uint16_t index, int call_fd) = 0;
  // Device reset (RESET_DEVICE, RESET_OWNER, front-end gone): every queue has
  // been stopped already; forget negotiated state.
  virtual void reset() = 0;
};

}  // namespace sluice
