#include "tests/support/mock_guest.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace sluice::test {

namespace {
[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "mock guest: %s\n", what);
  std::abort();
}
}  // namespace

UniqueFd make_memfd(uint64_t size) {
  UniqueFd fd(::memfd_create("sluice-guest", MFD_CLOEXEC));
  if (!fd.valid()) die("memfd_create failed");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) die("ftruncate failed");
  return fd;
}

MockGuest::MockGuest(std::vector<MockRegion> regions) : regions_(std::move(regions)) {
  std::vector<RegionSpec> specs;
  for (const MockRegion& r : regions_) {
    RegionSpec s;
    s.guest_phys = r.gpa;
    s.size = r.size;
    s.user_addr = 0x7f0000000000ull + r.gpa;  // any non-overlapping front-end address
    s.mmap_offset = 0;
    s.fd = make_memfd(r.size);
    specs.push_back(std::move(s));
    cursor_.push_back(r.gpa);
  }
  if (!mem_.set_regions(std::move(specs)).ok()) die("set_regions failed");
}

uint64_t MockGuest::alloc(uint64_t size, uint64_t align) {
  for (size_t i = 0; i < regions_.size(); ++i) {
    uint64_t at = (cursor_[i] + align - 1) / align * align;
    if (at + size <= regions_[i].gpa + regions_[i].size) {
      cursor_[i] = at + size;
      std::memset(host(at), 0, size);
      return at;
    }
  }
  die("out of guest memory");
}

std::byte* MockGuest::host(uint64_t gpa) const {
  auto p = mem_.snapshot()->translate_exact(gpa, 1);
  if (!p.ok()) die("host(): address not mapped");
  return p.value();
}

void MockGuest::write(uint64_t gpa, std::span<const std::byte> data) const {
  if (data.empty()) return;  // nothing to write (and memcpy from null is undefined)
  auto p = mem_.snapshot()->translate_exact(gpa, data.size());
  if (!p.ok()) die("write(): range not mapped");
  std::memcpy(p.value(), data.data(), data.size());
}

void MockGuest::fill(uint64_t gpa, uint64_t len, uint8_t value) const {
  auto p = mem_.snapshot()->translate_exact(gpa, len);
  if (!p.ok()) die("fill(): range not mapped");
  std::memset(p.value(), value, len);
}

MockDriver::MockDriver(MockGuest& guest, QueueLayout layout) : guest_(guest), layout_(layout) {
  desc_ = guest.alloc(virtq::desc_table_bytes(layout.size), 16);
  avail_ = guest.alloc(virtq::avail_ring_bytes(layout.size), 2);
  used_ = guest.alloc(virtq::used_ring_bytes(layout.size), 4);
  if (layout.indirect)
    indirect_ = guest.alloc(uint64_t{layout.size} * virtq::SplitDriver::kMaxIndirectPerHead *
                                sizeof(virtq::Desc), 16);
  arena_ = guest.alloc(kArena, 64);
  virtq::DriverConfig c;
  c.size = layout.size;
  c.desc_addr = desc_;
  c.avail_addr = avail_;
  c.used_addr = used_;
  c.indirect_addr = indirect_;
  c.event_idx = layout.event_idx;
  c.indirect = layout.indirect;
  c.in_order = layout.in_order;
  config_ = c;
  reset();
}

void MockDriver::reset() {
  if (!ring_.init(config_, *guest_.table()).ok()) die("driver init failed");
  arena_pos_ = 0;
}

virtq::QueueConfig MockDriver::device_config() const {
  virtq::QueueConfig c;
  c.size = layout_.size;
  c.desc_addr = desc_;
  c.avail_addr = avail_;
  c.used_addr = used_;
  c.event_idx = layout_.event_idx;
  c.indirect = layout_.indirect;
  c.in_order = layout_.in_order;
  c.batching = layout_.batching;
  return c;
}

uint16_t MockDriver::add_chain(std::span<const uint32_t> read_lens,
                               std::span<const uint32_t> write_lens, bool indirect,
                               uint8_t pattern, uint64_t token) {
  std::vector<virtq::DriverBuf> bufs;
  for (uint32_t len : read_lens) {
    uint64_t a = take(len);
    guest_.fill(a, len ? len : 1, pattern);
    bufs.push_back({a, len, false});
  }
  for (uint32_t len : write_lens) bufs.push_back({take(len), len, true});
  auto h = ring_.add(bufs, indirect, token);
  if (!h.ok()) die("add_chain: driver refused the chain");
  return h.value();
}

uint64_t MockDriver::take(uint32_t len) {
  uint64_t need = (uint64_t{len} + 63) / 64 * 64 + 64;
  if (need > kArena) die("buffer larger than the mock driver's arena");
  if (arena_pos_ + need > kArena) arena_pos_ = 0;
  uint64_t a = arena_ + arena_pos_;
  arena_pos_ += need;
  return a;
}

void MockDriver::poke_desc(uint16_t idx, const virtq::Desc& d) {
  std::memcpy(ring_.desc_table() + size_t{idx} * sizeof d, &d, sizeof d);
}
void MockDriver::poke_avail_entry(uint16_t slot, uint16_t head) {
  virtq::store_relaxed<uint16_t>(ring_.avail_area() + virtq::avail_entry_off(slot), head);
}
void MockDriver::poke_avail_idx(uint16_t idx) {
  virtq::store_release<uint16_t>(ring_.avail_area() + virtq::kAvailIdxOff, idx);
}
uint16_t MockDriver::peek_used_idx() const {
  return virtq::load_acquire<uint16_t>(ring_.used_area() + virtq::kUsedIdxOff);
}
virtq::UsedElem MockDriver::peek_used_elem(uint16_t slot) const {
  const std::byte* e = ring_.used_area() + virtq::used_entry_off(slot);
  return {virtq::load_relaxed<uint32_t>(e), virtq::load_relaxed<uint32_t>(e + 4)};
}
uint16_t MockDriver::peek_avail_event() const {
  return virtq::load_relaxed<uint16_t>(ring_.used_area() + virtq::used_entry_off(layout_.size));
}
uint16_t MockDriver::peek_used_flags() const {
  return virtq::load_relaxed<uint16_t>(ring_.used_area());
}

}  // namespace sluice::test
