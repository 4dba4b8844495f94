#include "vfio/dma_mapper.h"

#include <algorithm>

#include "dataplane/base/log.h"

namespace sluice::vfio {

namespace {
bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}
}  // namespace

DmaMapper::DmaMapper(Container& c, PlanPolicy policy) : c_(&c), policy_(policy) {}

DmaMapper::~DmaMapper() {
  if (!entries_.empty()) {
    Status s = unmap_all();
    if (!s.ok()) LOG_WARN("vfio", "unmapping at teardown failed: %s", s.error().name().data());
  }
}

uint64_t DmaMapper::available() const noexcept {
  const auto& avail = c_->info().dma_avail;
  if (!avail) return UINT32_MAX;
  return *avail > entries_.size() ? *avail - entries_.size() : 0;
}

uint32_t DmaMapper::refs(const DmaRegion& r) const noexcept {
  auto it = regions_.find(r.iova);
  return it != regions_.end() && it->second.r.same_memory(r) ? it->second.refs : 0;
}

bool DmaMapper::is_mapped(uint64_t iova, uint64_t len) const noexcept {
  if (len == 0) return true;
  auto it = entries_.upper_bound(iova);
  if (it == entries_.begin()) return false;
  --it;
  uint64_t at = iova;
  uint64_t end = iova + len;  // callers pass ranges that do not wrap
  while (it != entries_.end() && it->second.iova <= at) {
    uint64_t e_end = it->second.iova + it->second.size;
    if (e_end > at) at = e_end;
    if (at >= end) return true;
    ++it;
  }
  return false;
}

Status DmaMapper::map_fresh(std::span<const DmaRegion> fresh) {
  if (fresh.empty()) return {};
  if (!c_->ready()) return Errc::kQueueNotReady;
  auto plan = plan_dma(fresh, c_->info(), policy_, available());
  if (!plan.ok()) return plan.error();
  const auto& calls = plan->calls;
  for (size_t i = 0; i < calls.size(); ++i) {
    Status s = c_->map_dma(calls[i].vaddr, calls[i].iova, calls[i].size);
    if (s.ok()) {
      ++stats_.map_calls;
      continue;
    }
    // Roll back: the container ends as it began.
    for (size_t j = i; j-- > 0;) {
      if (c_->unmap_dma(calls[j].iova, calls[j].size).ok()) ++stats_.unmap_calls;
    }
    ++stats_.rollbacks;
    LOG_WARN("vfio", "MAP_DMA %zu of %zu (iova 0x%llx size 0x%llx) failed: %s errno %d; rolled back",
             i + 1, calls.size(), static_cast<unsigned long long>(calls[i].iova),
             static_cast<unsigned long long>(calls[i].size), s.error().name().data(),
             s.error().sys_errno);
    return s;
  }
  for (const MapCall& c : calls) entries_.emplace(c.iova, c);
  if (plan->skipped != 0)
    LOG_INFO("vfio", "%llu bytes fall in IOVA holes and stay unmapped",
             static_cast<unsigned long long>(plan->skipped));
  return {};
}

Status DmaMapper::map(std::span<const DmaRegion> regions) {
  std::vector<DmaRegion> fresh;
  std::vector<uint64_t> bumps;  // iovas of live regions taking a reference
  for (const DmaRegion& r : regions) {
    if (r.size == 0 || r.iova + r.size < r.iova) return Errc::kInvalidArgument;
    bool identical = false;
    auto it = regions_.upper_bound(r.iova);
    if (it != regions_.begin()) {
      auto prev = std::prev(it);
      if (prev->second.r.same_memory(r)) identical = true;
      else if (overlaps(prev->second.r.iova, prev->second.r.size, r.iova, r.size))
        return Errc::kDmaOverlap;
    }
    if (it != regions_.end() && overlaps(it->second.r.iova, it->second.r.size, r.iova, r.size))
      return Errc::kDmaOverlap;
    if (identical) {
      bumps.push_back(r.iova);
      continue;
    }
    // The same fresh region twice in one call: one mapping, two references.
    auto dup = std::find_if(fresh.begin(), fresh.end(),
                            [&](const DmaRegion& f) { return f.same_memory(r); });
    if (dup != fresh.end()) {
      bumps.push_back(r.iova);
      continue;
    }
    fresh.push_back(r);  // overlaps among fresh regions: the planner refuses them
  }
  if (Status s = map_fresh(fresh); !s.ok()) return s;
  for (const DmaRegion& r : fresh) regions_.emplace(r.iova, Live{r, 1});
  for (uint64_t iova : bumps) ++regions_.at(iova).refs;
  return {};
}

Status DmaMapper::unmap(std::span<const DmaRegion> regions) {
  // Validate everything first: nothing changes on a bad request.
  std::map<uint64_t, uint32_t> drops;
  for (const DmaRegion& r : regions) {
    auto it = regions_.find(r.iova);
    if (it == regions_.end() || !it->second.r.same_memory(r)) return Errc::kDmaNotMapped;
    if (++drops[r.iova] > it->second.refs) return Errc::kDmaNotMapped;
  }
  std::vector<DmaRegion> gone;
  for (auto [iova, n] : drops) {
    Live& l = regions_.at(iova);
    if (l.refs == n) gone.push_back(l.r);
  }
  // Kernel entries touching a region that goes, and what else they cover.
  std::vector<MapCall> affected;
  for (const auto& kv : entries_) {
    const MapCall& e = kv.second;
    bool hit = std::any_of(gone.begin(), gone.end(), [&](const DmaRegion& g) {
      return overlaps(g.iova, g.size, e.iova, e.size);
    });
    if (hit) affected.push_back(e);
  }
  for (const MapCall& e : affected) {
    auto r = c_->unmap_dma(e.iova, e.size);
    if (!r.ok()) return r.error();  // the kernel kept it; so do we
    ++stats_.unmap_calls;
    entries_.erase(e.iova);
  }
  for (auto [iova, n] : drops) {
    Live& l = regions_.at(iova);
    l.refs -= n;
    if (l.refs == 0) regions_.erase(iova);
  }
  // Survivors that shared an unmapped entry are mapped again.
  std::vector<DmaRegion> survivors;
  for (const auto& kv : regions_) {
    const DmaRegion& r = kv.second.r;
    bool hit = std::any_of(affected.begin(), affected.end(), [&](const MapCall& e) {
      return overlaps(r.iova, r.size, e.iova, e.size);
    });
    if (hit) survivors.push_back(r);
  }
  if (!survivors.empty()) {
    Status s = map_fresh(survivors);
    if (!s.ok()) {
      // They are no longer mapped: forget them rather than claim otherwise.
      for (const DmaRegion& r : survivors) regions_.erase(r.iova);
      return s;
    }
  }
  return {};
}

Status DmaMapper::unmap_all() {
  if (entries_.empty()) {
    regions_.clear();
    return {};
  }
  if (c_->has_unmap_all()) {
    if (Status s = c_->unmap_all(); !s.ok()) return s;
    ++stats_.unmap_calls;
    entries_.clear();
  } else {
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto r = c_->unmap_dma(it->second.iova, it->second.size);
      if (!r.ok()) return r.error();
      ++stats_.unmap_calls;
      it = entries_.erase(it);
    }
  }
  regions_.clear();
  return {};
}

void GuestMemoryDma::detach(DmaMapper* m) {
  mappers_.erase(std::remove(mappers_.begin(), mappers_.end(), m), mappers_.end());
}

Status GuestMemoryDma::attach(DmaMapper* m, const MemoryTable& current) {
  std::vector<DmaRegion> now;
  for (const GuestRegion& g : current.regions()) now.push_back(region_of(g));
  if (Status s = m->map(now); !s.ok()) return s;
  mappers_.push_back(m);
  return {};
}

void GuestMemoryDma::release(const MemoryTable& current) {
  std::vector<DmaRegion> now;
  for (const GuestRegion& g : current.regions()) now.push_back(region_of(g));
  for (DmaMapper* m : mappers_) {
    if (now.empty()) break;
    Status s = m->unmap(now);
    if (!s.ok()) LOG_WARN("vfio", "releasing guest memory failed: %s", s.error().name().data());
  }
  mappers_.clear();
}

DmaRegion GuestMemoryDma::region_of(const GuestRegion& g) {
  DmaRegion r{reinterpret_cast<uint64_t>(g.host), g.guest_phys, g.size,
              g.page_size != 0 ? g.page_size : 4096, {}};
  if (g.backing) r.backing = BackingId{g.backing->dev, g.backing->ino, g.backing->mmap_offset};
  return r;
}

Status GuestMemoryDma::on_memory_changed(const MemoryTable&, std::span<const GuestRegion> added,
                                         std::span<const GuestRegion> removed) {
  std::vector<DmaRegion> add, rem;
  for (const GuestRegion& g : added) add.push_back(region_of(g));
  for (const GuestRegion& g : removed) rem.push_back(region_of(g));
  Status first{};
  for (DmaMapper* m : mappers_) {
    // Removed first: a region replaced at the same guest address must be
    // gone from the IOMMU before its successor is mapped.
    if (!rem.empty()) {
      Status s = m->unmap(rem);
      if (!s.ok()) {
        LOG_WARN("vfio", "unmapping removed guest memory failed: %s", s.error().name().data());
        if (first.ok()) first = s;
      }
    }
    if (!add.empty()) {
      Status s = m->map(add);
      if (!s.ok()) {
        LOG_WARN("vfio", "mapping added guest memory failed: %s errno %d", s.error().name().data(),
                 s.error().sys_errno);
        if (first.ok()) first = s;
      }
    }
  }
  return first;
}

}  // namespace sluice::vfio
