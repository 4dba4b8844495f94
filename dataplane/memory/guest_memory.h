// Guest memory: the regions a front-end shares with us, mapped MAP_SHARED and
// published as an immutable table that is replaced atomically.
//
// Security model: every region parameter comes from the front-end (a VMM or
// DPDK virtio-user) and every guest address from the guest; both are hostile.
// Regions are validated before they are mapped, and translation only ever
// returns host spans that lie inside a mapped region.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "dataplane/base/mapped_region.h"
#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "dataplane/memory/guest_fault.h"

namespace sluice {

// One region as a front-end describes it (vhost-user VhostUserMemoryRegion plus
// its fd). The fd is taken over by GuestMemory.
struct RegionSpec {
  uint64_t guest_phys = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;    // the front-end's virtual address of guest_phys
  uint64_t mmap_offset = 0;  // offset of guest_phys inside fd
  UniqueFd fd;
};

// The mapping behind one region, shared by successive tables while the region
// is unchanged (a re-sent SET_MEM_TABLE does not remap).
struct RegionBacking {
  MappedRegion mapping;
  fault::Guard guard;  // after mapping: unregistered before it is unmapped
  UniqueFd fd;
  uint64_t mmap_offset = 0;
  uint64_t dev = 0, ino = 0;  // identity of the backing file
};

// A mapped region in a published table. Immutable.
struct GuestRegion {
  uint64_t guest_phys = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;
  std::byte* host = nullptr;    // host address of guest_phys
  uint64_t page_size = 0;       // backing page size (hugetlbfs: the huge page size)
  bool hugetlbfs = false;
  bool sealed = false;          // the file is sealed against shrinking (memfd F_SEAL_SHRINK)
  std::shared_ptr<const RegionBacking> backing;

  bool contains_gpa(uint64_t gpa) const noexcept { return gpa - guest_phys < size; }
  bool contains_uva(uint64_t uva) const noexcept { return uva - user_addr < size; }
};

// An immutable table of regions sorted by guest physical address. Lookup is a
// last-hit check followed by a binary search: O(log n).
class MemoryTable {
 public:
  MemoryTable() : MemoryTable(std::vector<GuestRegion>{}) {}
  // poison: the list shared with the tables before this one (null: a new one).
  explicit MemoryTable(std::vector<GuestRegion> sorted_regions,
                       std::shared_ptr<fault::PoisonList> poison = nullptr);

  // Host span for [gpa, gpa+len): the contiguous part that is mapped starting
  // at gpa. *len is shrunk at a region edge. Returns nullptr (and leaves *len)
  // when gpa is not mapped at all. Translate with a shrinking length, then
  // loop (STYLE.md rule 3).
  std::byte* translate(uint64_t gpa, uint64_t* len) const noexcept {
    const GuestRegion* hint = no_region();  // no caller hint: the table's own last hit
    return translate(gpa, len, hint);
  }
  // The same with a caller-held last-hit hint (a queue keeps one, so workers
  // never write shared state on lookup). `hint` must start as no_region() or
  // a region of this table.
  std::byte* translate(uint64_t gpa, uint64_t* len, const GuestRegion*& hint) const noexcept {
    const GuestRegion* r = hint;
    if (!r->contains_gpa(gpa)) [[unlikely]] {
      r = find(gpa);
      if (r == nullptr) return nullptr;
      hint = r;
    }
    uint64_t off = gpa - r->guest_phys;
    uint64_t room = r->size - off;
    if (*len > room) *len = room;
    return r->host + off;
  }
  // An empty region (contains nothing): the starting value of a hint.
  static const GuestRegion* no_region() noexcept;
  // The whole range must be contiguous in one region.
  Result<std::byte*> translate_exact(uint64_t gpa, uint64_t len) const noexcept;
  // Front-end user address to host (vhost-user ring addresses are given as such).
  Result<std::byte*> translate_user_exact(uint64_t uva, uint64_t len) const noexcept;
  // Front-end user address to guest physical address.
  Result<uint64_t> user_to_guest(uint64_t uva) const noexcept;
  // Host address (inside a region's mapping) to guest physical address.
  Result<uint64_t> host_to_guest(const void* host) const noexcept;
  // Pages of this memory that faulted (shared by the tables of one
  // GuestMemory while their mappings live): never used again.
  fault::PoisonList& poison() const noexcept { return *poison_; }
  // A fault this thread survived: when it lies in this memory, its page goes
  // on the poison list (one log line the first time) and the fault's guest
  // address is returned.
  Result<uint64_t> note_fault(const fault::Fault& f) const noexcept;

  std::span<const GuestRegion> regions() const noexcept { return regions_; }
  const GuestRegion* find(uint64_t gpa) const noexcept {
    uint32_t hint = last_hit_.load(std::memory_order_relaxed);
    if (hint < regions_.size() && regions_[hint].contains_gpa(gpa)) return &regions_[hint];
    return find_slow(gpa);
  }

 private:
  const GuestRegion* find_slow(uint64_t gpa) const noexcept;
  std::vector<GuestRegion> regions_;
  std::shared_ptr<fault::PoisonList> poison_;
  // A hint only: a relaxed atomic so concurrent readers of one table are
  // race-free; it is written only on a miss.
  mutable std::atomic<uint32_t> last_hit_{0};
};

// Told of regions added to and removed from the guest's memory, after the new
// table has been published and while the old one is still mapped. The VFIO
// DMA mapper is one such listener. A listener's error does not unpublish the
// table; it is returned to whoever changed the memory (a vhost-user session
// refuses the message), after every listener has been told.
class MemoryListener {
 public:
  virtual ~MemoryListener() = default;
  virtual Status on_memory_changed(const MemoryTable& table,
                                   std::span<const GuestRegion> added,
                                   std::span<const GuestRegion> removed) = 0;
};

// How much guest memory one front-end may have mapped: every byte is address
// space of the daemon (and, once touched, memory charged to it), so one
// front-end must not be able to take what the next one needs.
struct MemoryLimits {
  uint64_t max_bytes = UINT64_MAX;  // sum of region sizes
  uint32_t max_regions = 509;       // as libvhost-user's VHOST_USER_MAX_RAM_SLOTS
};

// The owner of a device's guest memory. Mutated by the control thread only;
// read by workers through snapshot(), which is safe from any thread.
class GuestMemory {
 public:
  static constexpr size_t kMaxRegions = 509;  // as libvhost-user's VHOST_USER_MAX_RAM_SLOTS

  GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  std::shared_ptr<const MemoryTable> snapshot() const noexcept {
    return table_.load(std::memory_order_acquire);
  }

  // Replaces the whole table (vhost-user SET_MEM_TABLE). Regions identical to
  // current ones keep their mapping. On error nothing changes.
  Status set_regions(std::vector<RegionSpec> specs);
  // Adds one region (ADD_MEM_REG).
  Status add_region(RegionSpec spec);
  // Removes the region with these coordinates (REM_MEM_REG).
  Status remove_region(uint64_t guest_phys, uint64_t size, uint64_t user_addr);
  // Drops every region (reset, disconnect).
  void clear();
  // Later changes that would go past these are refused (kTooManyRegions,
  // kMemoryLimit); what is mapped stays.
  void set_limits(const MemoryLimits& l) { limits_ = l; }
  const MemoryLimits& limits() const noexcept { return limits_; }

  void add_listener(MemoryListener* l);
  void remove_listener(MemoryListener* l);

 private:
  Status publish(std::vector<GuestRegion> regions);
  Result<GuestRegion> map_region(RegionSpec& spec) const;

  Status check_limits(uint64_t regions, uint64_t bytes) const;

  std::atomic<std::shared_ptr<const MemoryTable>> table_;
  std::vector<MemoryListener*> listeners_;
  MemoryLimits limits_;
  // Faulted pages, by host address: kept across tables while their mapping
  // lives, dropped with it (a later mapping may reuse the address).
  std::shared_ptr<fault::PoisonList> poison_ = std::make_shared<fault::PoisonList>();
};

// Checks one spec without mapping it: zero size, overflow, fd, file size.
Status validate_region_spec(const RegionSpec& spec);

}  // namespace sluice
