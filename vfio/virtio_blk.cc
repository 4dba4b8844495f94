#include "vfio/virtio_blk.h"

#include <linux/virtio_blk.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace sluice::vfio {

Result<std::unique_ptr<VirtioBlkDriver>> VirtioBlkDriver::start(Device& dev, DmaMapper& mapper,
                                                                const VirtioBlkOptions& opts) {
  if (opts.queues == 0 || opts.queue_size == 0 || (opts.queue_size & (opts.queue_size - 1)) != 0)
    return Errc::kInvalidArgument;
  std::unique_ptr<VirtioBlkDriver> d(new VirtioBlkDriver());
  if (Status s = dev.enable_bus_master(); !s.ok()) return s.error();
  auto pci = VirtioPci::open(dev);
  if (!pci.ok()) return pci.error();
  d->pci_ = std::move(pci.value());
  VirtioPci& p = *d->pci_;
  if (Status s = p.reset(); !s.ok()) return s.error();
  // No EVENT_IDX: every completion interrupts (unless a queue is polled),
  // which is what the interrupt path is tested by.
  uint64_t wanted = uint64_t{1} << VIRTIO_BLK_F_MQ | uint64_t{1} << VIRTIO_BLK_F_FLUSH |
                    uint64_t{1} << virtq::kFInOrder | opts.extra_features;
  auto feats = p.negotiate(wanted);
  if (!feats.ok()) return feats.error();
  d->features_ = feats.value();
  auto cap = p.config_read64(offsetof(virtio_blk_config, capacity));
  if (!cap.ok()) return cap.error();
  d->capacity_ = cap.value();
  uint16_t nq = 1;
  if (d->features_ & (uint64_t{1} << VIRTIO_BLK_F_MQ)) {
    auto n = p.config_read32(offsetof(virtio_blk_config, num_queues) & ~3u);
    if (n.ok()) {
      // num_queues is the u16 at offset 34 (inside the aligned u32 at 32).
      uint16_t mq = static_cast<uint16_t>(n.value() >> 16);
      nq = std::max<uint16_t>(1, mq);
    }
  }
  nq = std::min<uint16_t>(nq, opts.queues);
  nq = std::min<uint16_t>(nq, p.num_queues());
  if (nq > 64) return Errc::kInvalidArgument;
  bool wants_arr[64];
  for (uint16_t i = 0; i < nq; ++i) wants_arr[i] = opts.interrupts;
  if (auto v = p.setup_vectors(std::span<const bool>(wants_arr, nq)); !v.ok()) return v.error();

  auto arena = DmaArena::create(mapper, opts.arena_iova, opts.arena_bytes);
  if (!arena.ok()) return arena.error();
  d->arena_ = std::move(arena.value());
  DmaArena& a = *d->arena_;
  bool event_idx = d->features_ & (uint64_t{1} << virtq::kFEventIdx);
  for (uint16_t q = 0; q < nq; ++q) {
    auto max = p.queue_max_size(q);
    if (!max.ok() || max.value() == 0) return Errc::kVirtioQueueUnavailable;
    uint16_t size = opts.queue_size;
    while (size > max.value()) size = static_cast<uint16_t>(size / 2);
    virtq::DriverConfig cfg;
    cfg.size = size;
    cfg.event_idx = event_idx;
    cfg.in_order = (d->features_ >> virtq::kFInOrder) & 1;
    auto desc = a.alloc(virtq::desc_table_bytes(size), 16);
    auto avail = a.alloc(virtq::avail_ring_bytes(size), 2);
    auto used = a.alloc(virtq::used_ring_bytes(size), 4);
    auto hdr = a.alloc(uint64_t{16} * size, 16);
    auto st = a.alloc(size, 1);
    if (!desc.ok() || !avail.ok() || !used.ok() || !hdr.ok() || !st.ok()) return Errc::kQueueFull;
    cfg.desc_addr = desc.value();
    cfg.avail_addr = avail.value();
    cfg.used_addr = used.value();
    auto ring = std::make_unique<virtq::SplitDriver>();
    if (Status s = ring->init(cfg, a.table()); !s.ok()) return s.error();
    if (Status s = p.enable_queue(q, size, cfg.desc_addr, cfg.avail_addr, cfg.used_addr); !s.ok())
      return s.error();
    d->rings_.push_back(std::move(ring));
    d->hdr_iova_.push_back(hdr.value());
    d->st_iova_.push_back(st.value());
    d->irqs_.push_back(0);
    d->last_seen_.push_back(0);
    std::vector<uint16_t> slots(size);
    for (uint16_t i = 0; i < size; ++i) slots[i] = static_cast<uint16_t>(size - 1 - i);
    d->free_slots_.push_back(std::move(slots));
  }
  if (Status s = p.driver_ok(); !s.ok()) return s.error();
  return d;
}

VirtioBlkDriver::~VirtioBlkDriver() {
  // The device stops touching the arena before it is unmapped.
  if (pci_) (void)pci_->reset();
}

Status VirtioBlkDriver::submit(uint16_t q, uint32_t type, uint64_t sector,
                               std::span<const virtq::DriverBuf> data, uint64_t token) {
  if (q >= rings_.size()) return Errc::kVirtioQueueUnavailable;
  if (data.size() + 2 > rings_[q]->free_descs() || data.size() + 2 > 66 || free_slots_[q].empty())
    return Errc::kQueueFull;
  // Header and status live in a slot from the queue's private free list
  // (returned when the request completes; never chosen by the device).
  uint16_t slot = free_slots_[q].back();
  uint64_t hdr = hdr_iova_[q] + uint64_t{16} * slot;
  uint64_t st = st_iova_[q] + slot;
  virtq::DriverBuf bufs[66];
  size_t n = 0;
  bufs[n++] = virtq::DriverBuf{hdr, sizeof(virtio_blk_outhdr), false};
  for (const auto& b : data) bufs[n++] = b;
  bufs[n++] = virtq::DriverBuf{st, 1, true};
  virtio_blk_outhdr h{};
  h.type = type;
  h.sector = sector;
  std::memcpy(arena_->host(hdr, sizeof h), &h, sizeof h);
  *arena_->host(st) = std::byte{0xff};
  // The token carries the slot (for the status byte) and the caller's token.
  if (Status s = add_raw(q, std::span(bufs, n), (token << 16) | slot); !s.ok()) return s;
  free_slots_[q].pop_back();
  kick(q);
  return {};
}

Result<size_t> VirtioBlkDriver::reap(uint16_t q, const std::function<void(const BlkCompletion&)>& fn) {
  return reap_raw(q, [&](uint64_t token, uint32_t len) {
    auto slot = static_cast<uint16_t>(token & 0xffff);
    uint8_t status = static_cast<uint8_t>(*arena_->host(st_iova_[q] + slot));
    free_slots_[q].push_back(slot);
    fn(BlkCompletion{token >> 16, status, len});
  });
}

Status VirtioBlkDriver::add_raw(uint16_t q, std::span<const virtq::DriverBuf> bufs, uint64_t token) {
  if (q >= rings_.size()) return Errc::kVirtioQueueUnavailable;
  if (bufs.empty() || bufs.size() > rings_[q]->free_descs()) return Errc::kQueueFull;
  auto head = rings_[q]->add(bufs, false, token);
  if (!head.ok()) return head.error();
  return {};
}

void VirtioBlkDriver::kick(uint16_t q) {
  if (q < rings_.size() && rings_[q]->publish()) pci_->notify(q);
}

bool VirtioBlkDriver::has_used(uint16_t q) const noexcept {
  if (q >= rings_.size()) return false;
  // A peek at the used index; get_used() validates what it finds.
  return rings_[q]->outstanding() != 0 &&
         virtq::load_acquire<uint16_t>(rings_[q]->used_area() + virtq::kUsedIdxOff) != last_seen_[q];
}

Result<size_t> VirtioBlkDriver::reap_raw(uint16_t q, const std::function<void(uint64_t, uint32_t)>& fn) {
  if (q >= rings_.size()) return Errc::kVirtioQueueUnavailable;
  size_t n = 0;
  virtq::UsedBuf u;
  for (;;) {
    auto g = rings_[q]->get_used(u);
    if (!g.ok()) return g.error();
    if (!g.value()) break;
    fn(u.token, u.len);
    ++n;
  }
  last_seen_[q] = virtq::load_acquire<uint16_t>(rings_[q]->used_area() + virtq::kUsedIdxOff);
  return n;
}

bool VirtioBlkDriver::wait(uint16_t q, int timeout_ms) {
  int fd = pci_->queue_eventfd(q);
  if (fd < 0) {
    // No vector: poll the used ring's index until something arrives.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    std::byte* used = rings_[q]->used_area();
    uint16_t seen = virtq::load_acquire<uint16_t>(used + virtq::kUsedIdxOff);
    while (std::chrono::steady_clock::now() < deadline) {
      if (virtq::load_acquire<uint16_t>(used + virtq::kUsedIdxOff) != seen) return false;
      ::usleep(50);
    }
    return false;
  }
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return false;
  uint64_t v;
  if (::read(fd, &v, sizeof v) != sizeof v) return false;
  irqs_[q] += v;
  return true;
}

}  // namespace sluice::vfio
