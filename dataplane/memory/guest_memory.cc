#include "dataplane/memory/guest_memory.h"

#include <linux/magic.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "dataplane/base/log.h"

namespace sluice {

MemoryTable::MemoryTable(std::vector<GuestRegion> sorted_regions,
                         std::shared_ptr<fault::PoisonList> poison)
    : regions_(std::move(sorted_regions)),
      poison_(poison ? std::move(poison) : std::make_shared<fault::PoisonList>()) {}

const GuestRegion* MemoryTable::no_region() noexcept {
  static const GuestRegion kNone{};
  return &kNone;
}

const GuestRegion* MemoryTable::find_slow(uint64_t gpa) const noexcept {
  // First region whose start is > gpa; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const GuestRegion& r) { return a < r.guest_phys; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (!it->contains_gpa(gpa)) return nullptr;
  last_hit_.store(static_cast<uint32_t>(it - regions_.begin()), std::memory_order_relaxed);
  return &*it;
}

Result<std::byte*> MemoryTable::translate_exact(uint64_t gpa, uint64_t len) const noexcept {
  uint64_t got = len;
  std::byte* p = translate(gpa, &got);
  if (p == nullptr || got != len) return Errc::kAddressNotMapped;
  return p;
}

Result<std::byte*> MemoryTable::translate_user_exact(uint64_t uva, uint64_t len) const noexcept {
  for (const GuestRegion& r : regions_) {
    if (!r.contains_uva(uva)) continue;
    uint64_t off = uva - r.user_addr;
    if (len > r.size - off) return Errc::kAddressNotMapped;
    return r.host + off;
  }
  return Errc::kAddressNotMapped;
}

Result<uint64_t> MemoryTable::user_to_guest(uint64_t uva) const noexcept {
  for (const GuestRegion& r : regions_)
    if (r.contains_uva(uva)) return r.guest_phys + (uva - r.user_addr);
  return Errc::kAddressNotMapped;
}

Result<uint64_t> MemoryTable::host_to_guest(const void* host) const noexcept {
  const auto* h = static_cast<const std::byte*>(host);
  for (const GuestRegion& r : regions_)
    if (h >= r.host && static_cast<uint64_t>(h - r.host) < r.size)
      return r.guest_phys + static_cast<uint64_t>(h - r.host);
  return Errc::kAddressNotMapped;
}

Result<uint64_t> MemoryTable::note_fault(const fault::Fault& f) const noexcept {
  auto gpa = host_to_guest(reinterpret_cast<const void*>(f.addr));
  if (!gpa.ok()) return gpa;
  const uint64_t page_gpa = gpa.value() - (f.addr - f.page);
  if (poison_->add({page_gpa, f.page, f.page_size, f.cause})) {
    const std::string_view why = fault::cause_name(f.cause);
    LOG_WARN("memory", "guest page at gpa 0x%llx (%llu bytes) faulted: %.*s; not used again",
             static_cast<unsigned long long>(page_gpa), static_cast<unsigned long long>(f.page_size),
             static_cast<int>(why.size()), why.data());
  }
  return gpa;
}

Status validate_region_spec(const RegionSpec& spec) {
  if (spec.size == 0) return Errc::kRegionZeroSize;
  uint64_t end;
  if (__builtin_add_overflow(spec.guest_phys, spec.size - 1, &end) ||
      __builtin_add_overflow(spec.user_addr, spec.size - 1, &end) ||
      __builtin_add_overflow(spec.mmap_offset, spec.size, &end) ||
      spec.size > static_cast<uint64_t>(SIZE_MAX / 2))
    return Errc::kRegionAddressOverflow;
  if (!spec.fd.valid()) return Errc::kRegionBadFd;
  struct stat st{};
  if (::fstat(spec.fd.get(), &st) != 0) return Error(Errc::kRegionBadFd, errno);
  // Regular files (memfd, hugetlbfs, /dev/shm) have a size to check against;
  // a mapping past EOF would SIGBUS on first touch.
  if (S_ISREG(st.st_mode)) {
    if (spec.mmap_offset + spec.size > static_cast<uint64_t>(st.st_size))
      return Errc::kRegionPastEndOfFile;
  } else if (S_ISBLK(st.st_mode)) {
    // A block device has a size too (st_size is 0 for it): a region past
    // its end faults on first touch.
    uint64_t bytes = 0;
    if (::ioctl(spec.fd.get(), BLKGETSIZE64, &bytes) != 0) return Error(Errc::kRegionBadFd, errno);
    if (spec.mmap_offset + spec.size > bytes) return Errc::kRegionPastEndOfFile;
  } else if (!S_ISCHR(st.st_mode)) {
    return Errc::kRegionBadFd;  // a socket, pipe or directory cannot be guest RAM
  }
  return {};
}

Result<GuestRegion> GuestMemory::map_region(RegionSpec& spec) const {
  SLUICE_TRY(validate_region_spec(spec));
  struct statfs sfs{};
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  bool huge = false;
  if (::fstatfs(spec.fd.get(), &sfs) == 0 &&
      static_cast<uint64_t>(sfs.f_type) == static_cast<uint64_t>(HUGETLBFS_MAGIC)) {
    huge = true;
    page = static_cast<uint64_t>(sfs.f_bsize);
  }
  // mmap offsets must be page aligned (huge-page aligned on hugetlbfs): map from
  // the aligned-down offset and step over the slack.
  uint64_t slack = spec.mmap_offset % page;
  uint64_t map_off = spec.mmap_offset - slack;
  uint64_t map_len = spec.size + slack;
  if (map_len % page != 0) map_len += page - map_len % page;
  auto m = MappedRegion::map_shared(spec.fd.get(), map_len, map_off, PROT_READ | PROT_WRITE,
                                    MAP_NORESERVE);
  if (!m.ok()) {
    LOG_ERROR("memory", "mmap of region gpa=0x%llx size=0x%llx failed: errno %d",
              static_cast<unsigned long long>(spec.guest_phys),
              static_cast<unsigned long long>(spec.size), m.error().sys_errno);
    return m.error();
  }
  struct stat st{};
  (void)::fstat(spec.fd.get(), &st);
  auto backing = std::make_shared<RegionBacking>();
  backing->mapping = std::move(m.value());
  // Faults in the mapping (the front-end shrinks the file, a page is
  // poisoned) are survived, not fatal: see guest_fault.h.
  backing->guard = fault::Guard(backing->mapping.data(), backing->mapping.size(), page);
  backing->mmap_offset = spec.mmap_offset;
  backing->dev = st.st_dev;
  backing->ino = st.st_ino;
  backing->fd = std::move(spec.fd);
  const int r_fd_for_seals = backing->fd.get();
  GuestRegion r;
  r.guest_phys = spec.guest_phys;
  r.size = spec.size;
  r.user_addr = spec.user_addr;
  r.host = backing->mapping.data() + slack;
  r.page_size = page;
  r.hugetlbfs = huge;
  int seals = ::fcntl(r_fd_for_seals, F_GET_SEALS);
  r.sealed = seals > 0 && (seals & F_SEAL_SHRINK) != 0;
  r.backing = std::move(backing);
  return r;
}

GuestMemory::GuestMemory() : table_(std::make_shared<const MemoryTable>()) {}

namespace {

bool same_region(const GuestRegion& r, const RegionSpec& s) {
  if (r.guest_phys != s.guest_phys || r.size != s.size || r.user_addr != s.user_addr ||
      r.backing->mmap_offset != s.mmap_offset)
    return false;
  struct stat st{};
  if (::fstat(s.fd.get(), &st) != 0) return false;
  return st.st_dev == r.backing->dev && st.st_ino == r.backing->ino;
}

bool same_identity(const GuestRegion& a, const GuestRegion& b) {
  return a.backing == b.backing && a.guest_phys == b.guest_phys && a.size == b.size;
}

// Sorts by guest address and refuses overlaps (in guest or user addresses).
Status sort_and_check(std::vector<GuestRegion>& regions) {
  if (regions.size() > GuestMemory::kMaxRegions) return Errc::kTooManyRegions;
  std::sort(regions.begin(), regions.end(),
            [](const GuestRegion& a, const GuestRegion& b) { return a.guest_phys < b.guest_phys; });
  for (size_t i = 1; i < regions.size(); ++i)
    if (regions[i].guest_phys - regions[i - 1].guest_phys < regions[i - 1].size)
      return Errc::kRegionOverlap;
  for (size_t i = 0; i < regions.size(); ++i)
    for (size_t j = i + 1; j < regions.size(); ++j) {
      const GuestRegion& a = regions[i];
      const GuestRegion& b = regions[j];
      if (a.user_addr < b.user_addr + b.size && b.user_addr < a.user_addr + a.size)
        return Errc::kRegionOverlap;
    }
  return {};
}

// Checks spec coordinates before anything is mapped.
Status precheck(const std::vector<RegionSpec>& specs) {
  if (specs.size() > GuestMemory::kMaxRegions) return Errc::kTooManyRegions;
  for (const RegionSpec& s : specs) SLUICE_TRY(validate_region_spec(s));
  return {};
}

}  // namespace

Status GuestMemory::check_limits(uint64_t regions, uint64_t bytes) const {
  if (regions > std::min<uint64_t>(limits_.max_regions, kMaxRegions)) return Errc::kTooManyRegions;
  if (bytes > limits_.max_bytes) return Errc::kMemoryLimit;
  return {};
}

Status GuestMemory::set_regions(std::vector<RegionSpec> specs) {
  SLUICE_TRY(precheck(specs));
  uint64_t bytes = 0;
  for (const RegionSpec& s : specs)
    if (__builtin_add_overflow(bytes, s.size, &bytes)) return Errc::kMemoryLimit;
  SLUICE_TRY(check_limits(specs.size(), bytes));
  auto old = snapshot();
  std::vector<GuestRegion> next;
  next.reserve(specs.size());
  for (RegionSpec& s : specs) {
    auto reuse = std::find_if(old->regions().begin(), old->regions().end(),
                              [&](const GuestRegion& r) { return same_region(r, s); });
    if (reuse != old->regions().end()) {
      next.push_back(*reuse);  // same file, same coordinates: keep the mapping
      continue;
    }
    auto r = map_region(s);
    if (!r.ok()) return r.error();  // mappings made so far are released by RAII
    next.push_back(std::move(r.value()));
  }
  SLUICE_TRY(sort_and_check(next));
  return publish(std::move(next));
}

Status GuestMemory::add_region(RegionSpec spec) {
  auto old = snapshot();
  uint64_t bytes = spec.size;
  for (const GuestRegion& r : old->regions())
    if (__builtin_add_overflow(bytes, r.size, &bytes)) return Errc::kMemoryLimit;
  SLUICE_TRY(check_limits(old->regions().size() + 1, bytes));
  auto r = map_region(spec);
  if (!r.ok()) return r.error();
  std::vector<GuestRegion> next(old->regions().begin(), old->regions().end());
  next.push_back(std::move(r.value()));
  SLUICE_TRY(sort_and_check(next));
  return publish(std::move(next));
}

Status GuestMemory::remove_region(uint64_t guest_phys, uint64_t size, uint64_t user_addr) {
  auto old = snapshot();
  std::vector<GuestRegion> next;
  bool found = false;
  for (const GuestRegion& r : old->regions()) {
    if (!found && r.guest_phys == guest_phys && r.size == size && r.user_addr == user_addr) {
      found = true;
      continue;
    }
    next.push_back(r);
  }
  if (!found) return Errc::kRegionNotFound;
  return publish(std::move(next));
}

void GuestMemory::clear() { (void)publish({}); }

Status GuestMemory::publish(std::vector<GuestRegion> regions) {
  // Poisoned pages of mappings that go away are forgotten: the next mapping
  // may get the same host addresses.
  const fault::PoisonList& old_poison = *poison_;
  bool keep_all = true;
  auto still_mapped = [&](uintptr_t host) {
    return std::any_of(regions.begin(), regions.end(), [&](const GuestRegion& r) {
      return host - reinterpret_cast<uintptr_t>(r.host) < r.size;
    });
  };
  for (uint32_t i = 0; i < old_poison.size(); ++i) keep_all &= still_mapped(old_poison.at(i).host);
  if (!keep_all) {
    auto fresh = std::make_shared<fault::PoisonList>();
    for (uint32_t i = 0; i < old_poison.size(); ++i)
      if (still_mapped(old_poison.at(i).host)) (void)fresh->add(old_poison.at(i));
    poison_ = std::move(fresh);
  }
  auto next = std::make_shared<const MemoryTable>(std::move(regions), poison_);
  auto old = table_.exchange(next, std::memory_order_acq_rel);
  if (listeners_.empty()) return {};
  std::vector<GuestRegion> added, removed;
  for (const GuestRegion& r : next->regions()) {
    bool existed = std::any_of(old->regions().begin(), old->regions().end(),
                               [&](const GuestRegion& o) { return same_identity(o, r); });
    if (!existed) added.push_back(r);
  }
  for (const GuestRegion& o : old->regions()) {
    bool stays = std::any_of(next->regions().begin(), next->regions().end(),
                             [&](const GuestRegion& r) { return same_identity(o, r); });
    if (!stays) removed.push_back(o);
  }
  if (added.empty() && removed.empty()) return {};
  Status first{};
  for (MemoryListener* l : listeners_) {
    Status s = l->on_memory_changed(*next, added, removed);
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

void GuestMemory::add_listener(MemoryListener* l) { listeners_.push_back(l); }
void GuestMemory::remove_listener(MemoryListener* l) {
  listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), l), listeners_.end());
}

}  // namespace sluice
