#include "vfio/offload.h"

#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/virtio_config.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/virtq/ring.h"

namespace sluice::vfio {

namespace {
// Bits a front-end may negotiate through us: the device-specific ones, the
// ring layout bits we can hand over (indirect, event index, in-order) and
// VERSION_1. ACCESS_PLATFORM is ours (we program IOVAs); packed rings,
// notification data and ring reset are not offered (the session speaks split
// rings and knows nothing of per-queue resets).
constexpr uint64_t kPassThrough = ((uint64_t{1} << 28) - 1) | (uint64_t{1} << virtq::kFIndirectDesc) |
                                  (uint64_t{1} << virtq::kFEventIdx) | (uint64_t{1} << virtq::kFVersion1) |
                                  (uint64_t{1} << virtq::kFInOrder);
}  // namespace

Result<std::unique_ptr<VirtioOffloadDevice>> VirtioOffloadDevice::open(Device& dev) {
  std::unique_ptr<VirtioOffloadDevice> d(new VirtioOffloadDevice());
  if (Status s = dev.enable_bus_master(); !s.ok()) return s.error();
  auto pci = VirtioPci::open(dev);
  if (!pci.ok()) return pci.error();
  d->pci_ = std::move(pci.value());
  if (Status s = d->pci_->reset(); !s.ok()) return s.error();
  // virtio-pci modern device ids are 0x1040 + virtio device type.
  auto did = dev.config_read16(PCI_DEVICE_ID);
  if (!did.ok()) return did.error();
  if (did.value() < 0x1041 || did.value() > 0x107f) return Errc::kVirtioNoCap;
  d->device_id_ = did.value() - 0x1040u;
  d->hw_features_ = d->pci_->device_features();
  if (!(d->hw_features_ & (uint64_t{1} << VIRTIO_F_VERSION_1))) return Errc::kVirtioFeatures;
  d->offered_ = d->hw_features_ & kPassThrough;
  d->nqueues_ = d->pci_->num_queues();
  if (d->nqueues_ == 0 || d->nqueues_ > 64) return Errc::kVirtioQueueUnavailable;
  auto max = d->pci_->queue_max_size(0);
  if (!max.ok() || max.value() == 0) return Errc::kVirtioQueueUnavailable;
  d->max_size_ = max.value();
  // The device-specific config as the hardware shows it (blk: capacity,
  // limits, geometry, num_queues...), bounded.
  auto cfg = d->pci_->config_snapshot(256);
  if (!cfg.ok()) return cfg.error();
  d->config_ = std::move(cfg.value());
  d->q_ = std::make_unique<Q[]>(d->nqueues_);
  d->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  d->stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!d->epoll_ || !d->stop_) return Error::from_errno(errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = UINT32_MAX;
  if (::epoll_ctl(d->epoll_.get(), EPOLL_CTL_ADD, d->stop_.get(), &ev) != 0) return Error::from_errno(errno);
  d->relay_ = std::thread([p = d.get()] { p->relay(); });
  return d;
}

VirtioOffloadDevice::~VirtioOffloadDevice() {
  uint64_t one = 1;
  if (stop_) (void)!::write(stop_.get(), &one, sizeof one);
  if (relay_.joinable()) relay_.join();
  if (pci_) (void)pci_->reset();  // the device lets go of guest memory first
}

void VirtioOffloadDevice::relay() {
  epoll_event evs[16];
  for (;;) {
    int n = ::epoll_wait(epoll_.get(), evs, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; ++i) {
      uint32_t q = evs[i].data.u32;
      if (q == UINT32_MAX) return;
      if (q >= nqueues_) continue;
      uint64_t v;
      int fd = q_[q].kick_fd;
      if (fd < 0 || ::read(fd, &v, sizeof v) != sizeof v) continue;
      pci_->notify(static_cast<uint16_t>(q));
      // Release: whoever reads the count sees the doorbell write before it.
      q_[q].kicks.fetch_add(1, std::memory_order_release);
    }
  }
}

Status VirtioOffloadDevice::write_config(uint32_t, std::span<const uint8_t>) {
  return Errc::kConfigOutOfRange;  // the hardware's config is read-only through us
}

Status VirtioOffloadDevice::bring_up(uint64_t features) {
  if (Status s = pci_->reset(); !s.ok()) return s;
  for (uint16_t i = 0; i < nqueues_; ++i) {
    q_[i].enabled = false;
    q_[i].stopped_at.reset();
  }
  driver_ok_ = false;
  auto accepted = pci_->negotiate(features);
  if (!accepted.ok()) return accepted.error();
  if ((accepted.value() & kPassThrough) != (features & kPassThrough)) return Errc::kVirtioFeatures;
  // One vector per queue: each is bound to its own queue's call fd.
  bool w[64];
  for (uint16_t i = 0; i < nqueues_; ++i) w[i] = true;
  auto pol = pci_->setup_vectors(std::span<const bool>(w, nqueues_));
  if (!pol.ok()) return pol.error();
  if (pol.value() == VectorPolicy::kNone || (pol.value() == VectorPolicy::kShared && nqueues_ > 1)) {
    LOG_WARN("vfio", "%s: offload needs one MSI-X vector per queue; the device gives %s",
             pci_->device().name().c_str(), vector_policy_name(pol.value()).data());
    return Errc::kVfioIrqBad;
  }
  driver_features_ = features;
  negotiated_ = true;
  return {};
}

void VirtioOffloadDevice::set_driver_features(uint64_t features) {
  features &= offered_;
  pending_ = Error{};
  if (negotiated_ && features == driver_features_) return;  // re-sent: nothing changes
  for (uint16_t i = 0; i < nqueues_; ++i)
    if (q_[i].running) {
      pending_ = Errc::kQueueRunning;
      return;
    }
  Status s = bring_up(features);
  if (!s.ok()) {
    negotiated_ = false;
    pending_ = s.error();
    LOG_WARN("vfio", "%s: feature negotiation for offload failed: %s", pci_->device().name().c_str(),
             s.error().name().data());
  }
}

Status VirtioOffloadDevice::bind_call(uint16_t q, int fd) {
  uint16_t v = pci_->queue_vector(q);
  if (v == kVirtioMsiNoVector) return Errc::kVfioIrqBad;
  if (fd < 0) {
    // No interrupts wanted: the vector fires a spare eventfd of ours.
    spare_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fd = spare_.back().get();
  }
  if (Status s = pci_->rebind_vector(v, fd); !s.ok()) return s;
  q_[q].call_fd = fd;
  return {};
}

Status VirtioOffloadDevice::queue_started(const QueueBinding& b) {
  if (b.index >= nqueues_ || b.queue == nullptr) return Errc::kVringIndexOutOfRange;
  if (pending_.code != Errc::kOk) return pending_;
  if (!negotiated_) return Errc::kVirtioFeatures;
  Q& q = q_[b.index];
  const virtq::QueueConfig& cfg = b.queue->config();
  const bool same_ring = q.enabled && q.desc == cfg.desc_addr && q.avail == cfg.avail_addr &&
                         q.used == cfg.used_addr && q.size == cfg.size;
  if (same_ring) {
    // Restarted where it stopped (a re-sent memory table): it never stopped
    // on the device.
    if (!q.stopped_at || *q.stopped_at != b.queue->last_avail_idx()) return Errc::kQueueRunning;
  } else {
    if (b.queue->last_avail_idx() != 0 || b.queue->used_idx() != 0) {
      LOG_WARN("vfio", "%s: queue %u: a virtio-pci device can only start a ring at index 0 (asked %u)",
               pci_->device().name().c_str(), b.index, b.queue->last_avail_idx());
      return Errc::kQueueRunning;
    }
    if (q.enabled) {
      // New rings for a queue the device still runs: only a reset frees it,
      // and that needs every other queue stopped.
      for (uint16_t i = 0; i < nqueues_; ++i)
        if (q_[i].running) return Errc::kQueueRunning;
      if (Status s = bring_up(driver_features_); !s.ok()) return s;
    }
    if (Status s = pci_->enable_queue(b.index, cfg.size, cfg.desc_addr, cfg.avail_addr, cfg.used_addr);
        !s.ok())
      return s;
    q.enabled = true;
    q.desc = cfg.desc_addr;
    q.avail = cfg.avail_addr;
    q.used = cfg.used_addr;
    q.size = cfg.size;
  }
  if (Status s = bind_call(b.index, b.call_fd); !s.ok()) return s;
  q.mem = b.queue->memory();
  if (!q.mem) return Errc::kVringAddrNotMapped;
  auto used = q.mem->translate_exact(q.used, virtq::used_ring_bytes(q.size));
  auto avail = q.mem->translate_exact(q.avail, virtq::avail_ring_bytes(q.size));
  if (!used.ok() || !avail.ok()) return Errc::kVringAddrNotMapped;
  q.used_host = used.value();
  q.avail_host = avail.value();
  if (!driver_ok_) {
    if (Status s = pci_->driver_ok(); !s.ok()) return s;
    driver_ok_ = true;
  }
  q.kick_fd = b.kick_fd;
  q.stopped_at.reset();
  q.running = true;
  if (b.kick_fd >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = b.index;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, b.kick_fd, &ev) != 0 && errno != EEXIST)
      return Error::from_errno(errno);
    pci_->notify(b.index);  // buffers made available before we started
  }
  return {};
}

void VirtioOffloadDevice::queue_stopped(uint16_t index) {
  if (index >= nqueues_ || !q_[index].running) return;
  Q& q = q_[index];
  if (q.kick_fd >= 0) (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, q.kick_fd, nullptr);
  q.kick_fd = -1;
  // The device keeps the ring; wait (bounded) until what the driver made
  // available has been used, then its position is the used index.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  uint16_t used = virtq::load_acquire<uint16_t>(q.used_host + virtq::kUsedIdxOff);
  uint16_t avail = virtq::load_acquire<uint16_t>(q.avail_host + virtq::kAvailIdxOff);
  while (used != avail && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    used = virtq::load_acquire<uint16_t>(q.used_host + virtq::kUsedIdxOff);
  }
  if (used != avail) {
    // The device kept them past the deadline: the ring's state is not
    // known, so the front-end's session ends (abandoned_queues()).
    LOG_WARN("vfio", "%s: queue %u stopped with %u request(s) still on the device: abandoned",
             pci_->device().name().c_str(), index, static_cast<uint16_t>(avail - used));
    abandoned_.fetch_add(1, std::memory_order_relaxed);
  }
  q.stopped_at = used;
  q.running = false;
}

std::optional<uint16_t> VirtioOffloadDevice::stopped_base(uint16_t index) {
  if (index >= nqueues_) return std::nullopt;
  return q_[index].stopped_at;
}

void VirtioOffloadDevice::call_fd_changed(uint16_t index, int call_fd) {
  if (index >= nqueues_ || !q_[index].running) return;
  // The guest masked or unmasked its vector: the device's vector follows.
  Status s = bind_call(index, call_fd);
  if (!s.ok())
    LOG_WARN("vfio", "%s: queue %u: rebinding the interrupt failed: %s", pci_->device().name().c_str(),
             index, s.error().name().data());
}

void VirtioOffloadDevice::reset() {
  for (uint16_t i = 0; i < nqueues_; ++i) {
    Q& q = q_[i];
    if (q.kick_fd >= 0) (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, q.kick_fd, nullptr);
    q.kick_fd = -1;
    q.call_fd = -1;
    q.enabled = q.running = false;
    q.stopped_at.reset();
    q.mem.reset();
    q.used_host = q.avail_host = nullptr;
  }
  (void)pci_->reset();
  negotiated_ = driver_ok_ = false;
  pending_ = Error{};
  spare_.clear();
}

OffloadQueueStats VirtioOffloadDevice::queue_stats(uint16_t q) const {
  if (q >= nqueues_) return {};
  return OffloadQueueStats{q_[q].running, pci_->queue_vector(q), q_[q].call_fd,
                           q_[q].kicks.load(std::memory_order_acquire)};
}

}  // namespace sluice::vfio
