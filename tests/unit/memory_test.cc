// Guest memory: translation, validation (one test per named error), atomic
// replacement and listeners.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include <gtest/gtest.h>

#include "dataplane/memory/guest_memory.h"
#include "tests/support/mock_guest.h"

namespace sluice {
namespace {

using test::make_memfd;

RegionSpec spec(uint64_t gpa, uint64_t size, uint64_t uva, uint64_t off = 0,
                uint64_t file_size = 0) {
  RegionSpec s;
  s.guest_phys = gpa;
  s.size = size;
  s.user_addr = uva;
  s.mmap_offset = off;
  s.fd = make_memfd(file_size ? file_size : off + size);
  return s;
}

Status set_one(GuestMemory& m, RegionSpec s) {
  std::vector<RegionSpec> v;
  v.push_back(std::move(s));
  return m.set_regions(std::move(v));
}

TEST(GuestMemory, TranslateShrinksAtRegionEdge) {
  GuestMemory m;
  ASSERT_TRUE(set_one(m, spec(0x10000, 0x4000, 0x7000000)).ok());
  auto t = m.snapshot();
  uint64_t len = 0x100;
  EXPECT_NE(t->translate(0x10000, &len), nullptr);
  EXPECT_EQ(len, 0x100u);
  len = 0x1000;
  std::byte* p = t->translate(0x13800, &len);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(len, 0x800u);  // shrunk to the region's end
  len = 1;
  EXPECT_EQ(t->translate(0x14000, &len), nullptr);  // one past the end
  EXPECT_EQ(t->translate(0xffff, &len), nullptr);   // one before the start
  EXPECT_EQ(t->translate_exact(0x13800, 0x1000).error(), Errc::kAddressNotMapped);
  EXPECT_TRUE(t->translate_exact(0x13800, 0x800).ok());
}

TEST(GuestMemory, ManyRegionsBinarySearch) {
  GuestMemory m;
  std::vector<RegionSpec> v;
  for (uint64_t i = 0; i < 64; ++i) v.push_back(spec(i * 0x100000, 0x1000, 0x40000000 + i * 0x10000));
  ASSERT_TRUE(m.set_regions(std::move(v)).ok());
  auto t = m.snapshot();
  for (uint64_t i = 0; i < 64; ++i) {
    uint64_t len = 16;
    std::byte* p = t->translate(i * 0x100000 + 0x10, &len);
    ASSERT_NE(p, nullptr);
    // Write through the table, read back through the region's host base.
    *p = static_cast<std::byte>(i);
    EXPECT_EQ(t->regions()[i].host[0x10], static_cast<std::byte>(i));
    len = 16;
    EXPECT_EQ(t->translate(i * 0x100000 + 0x2000, &len), nullptr);  // in a hole
  }
}

TEST(GuestMemory, UnalignedMmapOffset) {
  GuestMemory m;
  RegionSpec s = spec(0, 0x3000, 0x9000000, 0x1800, 0x5000);
  int raw = s.fd.get();
  const char tag[] = "sluice";
  ASSERT_EQ(::pwrite(raw, tag, sizeof tag, 0x1800), static_cast<ssize_t>(sizeof tag));
  ASSERT_TRUE(set_one(m, std::move(s)).ok());
  auto p = m.snapshot()->translate_exact(0, sizeof tag);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(std::memcmp(p.value(), tag, sizeof tag), 0);
}

TEST(GuestMemory, UserAddressTranslation) {
  GuestMemory m;
  ASSERT_TRUE(set_one(m, spec(0x10000, 0x4000, 0x7000000)).ok());
  auto t = m.snapshot();
  EXPECT_EQ(t->user_to_guest(0x7000010).value(), 0x10010u);
  EXPECT_EQ(t->user_to_guest(0x7004000).error(), Errc::kAddressNotMapped);
  EXPECT_EQ(t->translate_user_exact(0x7000000, 0x4000).value(), t->regions()[0].host);
  EXPECT_EQ(t->translate_user_exact(0x7000001, 0x4000).error(), Errc::kAddressNotMapped);
}

// One negative test per named error.
// An export's bounds: a change past them is refused whole, and what was
// mapped stays (one front-end cannot take the address space the next needs).
TEST(GuestMemoryErrors, LimitsRefuseWholeChanges) {
  GuestMemory m;
  m.set_limits(MemoryLimits{.max_bytes = 3 << 20, .max_regions = 2});
  ASSERT_TRUE(set_one(m, spec(0x100000, 2 << 20, 0x7000000)).ok());
  // Over the byte bound: 2 MiB + 2 MiB > 3 MiB.
  EXPECT_EQ(m.add_region(spec(0x800000, 2 << 20, 0x9000000)).error(), Errc::kMemoryLimit);
  std::vector<RegionSpec> two;
  two.push_back(spec(0x100000, 2 << 20, 0x7000000));
  two.push_back(spec(0x800000, 2 << 20, 0x9000000));
  EXPECT_EQ(m.set_regions(std::move(two)).error(), Errc::kMemoryLimit);
  EXPECT_EQ(m.snapshot()->regions().size(), 1u);
  // Within it: a second region of 1 MiB; a third is past the region bound.
  ASSERT_TRUE(m.add_region(spec(0x800000, 1 << 20, 0x9000000)).ok());
  m.set_limits(MemoryLimits{.max_bytes = 1ull << 40, .max_regions = 2});
  EXPECT_EQ(m.add_region(spec(0xa00000, 1 << 20, 0xb000000)).error(), Errc::kTooManyRegions);
  EXPECT_EQ(m.snapshot()->regions().size(), 2u);
  // Sizes that would wrap a 64-bit sum are over any bound.
  m.set_limits(MemoryLimits{});
  std::vector<RegionSpec> huge;
  huge.push_back(spec(0x100000, 1 << 20, 0x7000000));
  RegionSpec h = spec(0x200000, 1 << 20, 0x8000000);
  h.size = ~uint64_t{0} - (1 << 19);
  huge.push_back(std::move(h));
  EXPECT_FALSE(m.set_regions(std::move(huge)).ok());
}

TEST(GuestMemoryErrors, ZeroSize) {
  GuestMemory m;
  EXPECT_EQ(set_one(m, spec(0, 0, 0x1000, 0, 4096)).error(), Errc::kRegionZeroSize);
}

TEST(GuestMemoryErrors, OverlapInGuestAddresses) {
  GuestMemory m;
  std::vector<RegionSpec> v;
  v.push_back(spec(0x0, 0x2000, 0x100000));
  v.push_back(spec(0x1000, 0x2000, 0x200000));
  EXPECT_EQ(m.set_regions(std::move(v)).error(), Errc::kRegionOverlap);
  EXPECT_TRUE(m.snapshot()->regions().empty());  // nothing published
}

TEST(GuestMemoryErrors, OverlapInUserAddresses) {
  GuestMemory m;
  std::vector<RegionSpec> v;
  v.push_back(spec(0x0, 0x2000, 0x100000));
  v.push_back(spec(0x10000, 0x2000, 0x101000));
  EXPECT_EQ(m.set_regions(std::move(v)).error(), Errc::kRegionOverlap);
}

TEST(GuestMemoryErrors, AddOverlappingRegion) {
  GuestMemory m;
  ASSERT_TRUE(set_one(m, spec(0x0, 0x2000, 0x100000)).ok());
  EXPECT_EQ(m.add_region(spec(0x1fff, 0x1000, 0x900000)).error(), Errc::kRegionOverlap);
  EXPECT_EQ(m.snapshot()->regions().size(), 1u);
}

TEST(GuestMemoryErrors, PastEndOfFile) {
  GuestMemory m;
  EXPECT_EQ(set_one(m, spec(0, 0x2000, 0x1000, 0x1000, 0x2000)).error(),
            Errc::kRegionPastEndOfFile);
}

TEST(GuestMemoryErrors, AddressOverflow) {
  GuestMemory m;
  EXPECT_EQ(set_one(m, spec(~0ull - 0xfff, 0x2000, 0x1000, 0, 0x2000)).error(),
            Errc::kRegionAddressOverflow);
  EXPECT_EQ(set_one(m, spec(0, 0x2000, ~0ull - 0x10, 0, 0x2000)).error(),
            Errc::kRegionAddressOverflow);
  RegionSpec s = spec(0, 0x2000, 0x1000, 0, 0x2000);
  s.mmap_offset = ~0ull - 0x1000;
  EXPECT_EQ(set_one(m, std::move(s)).error(), Errc::kRegionAddressOverflow);
}

TEST(GuestMemoryErrors, BadFd) {
  GuestMemory m;
  RegionSpec s;
  s.size = 0x1000;
  EXPECT_EQ(set_one(m, std::move(s)).error(), Errc::kRegionBadFd);  // no fd at all
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ::close(p[1]);
  RegionSpec t;
  t.size = 0x1000;
  t.fd = UniqueFd(p[0]);
  EXPECT_EQ(set_one(m, std::move(t)).error(), Errc::kRegionBadFd);  // a pipe is not RAM
}

TEST(GuestMemoryErrors, TooManyRegions) {
  GuestMemory m;
  std::vector<RegionSpec> v;
  for (uint64_t i = 0; i <= GuestMemory::kMaxRegions; ++i)
    v.push_back(spec(i * 0x1000, 0x1000, 0x10000000 + i * 0x1000));
  EXPECT_EQ(m.set_regions(std::move(v)).error(), Errc::kTooManyRegions);
}

TEST(GuestMemoryErrors, RemoveUnknownRegion) {
  GuestMemory m;
  ASSERT_TRUE(set_one(m, spec(0x0, 0x2000, 0x100000)).ok());
  EXPECT_EQ(m.remove_region(0x0, 0x1000, 0x100000).error(), Errc::kRegionNotFound);
}

struct RecordingListener : MemoryListener {
  GuestMemory* mem = nullptr;
  std::vector<uint64_t> added, removed;
  size_t published_at_call = 0;
  Status on_memory_changed(const MemoryTable& table, std::span<const GuestRegion> a,
                           std::span<const GuestRegion> r) override {
    for (const auto& x : a) added.push_back(x.guest_phys);
    for (const auto& x : r) removed.push_back(x.guest_phys);
    // Publish, then notify: the table we are told about is already current.
    EXPECT_EQ(mem->snapshot().get(), &table);
    published_at_call = table.regions().size();
    return {};
  }
};

TEST(GuestMemory, ListenersHearAfterPublication) {
  GuestMemory m;
  RecordingListener l;
  l.mem = &m;
  m.add_listener(&l);
  ASSERT_TRUE(set_one(m, spec(0x0, 0x2000, 0x100000)).ok());
  EXPECT_EQ(l.added, std::vector<uint64_t>{0x0});
  ASSERT_TRUE(m.add_region(spec(0x10000, 0x1000, 0x200000)).ok());
  EXPECT_EQ(l.added, (std::vector<uint64_t>{0x0, 0x10000}));
  EXPECT_EQ(l.published_at_call, 2u);
  ASSERT_TRUE(m.remove_region(0x0, 0x2000, 0x100000).ok());
  EXPECT_EQ(l.removed, std::vector<uint64_t>{0x0});
  m.clear();
  EXPECT_EQ(l.removed, (std::vector<uint64_t>{0x0, 0x10000}));
  m.remove_listener(&l);
}

TEST(GuestMemory, ResentTableKeepsMappingAndIsSilent) {
  // DPDK's virtio-user re-sends SET_MEM_TABLE while running: identical regions
  // must keep their mapping, so running queues' pointers stay valid.
  GuestMemory m;
  RegionSpec s = spec(0x0, 0x2000, 0x100000);
  int dupfd = ::dup(s.fd.get());
  ASSERT_TRUE(set_one(m, std::move(s)).ok());
  auto before = m.snapshot();
  RecordingListener l;
  l.mem = &m;
  m.add_listener(&l);
  RegionSpec again;
  again.guest_phys = 0x0;
  again.size = 0x2000;
  again.user_addr = 0x100000;
  again.fd = UniqueFd(dupfd);
  ASSERT_TRUE(set_one(m, std::move(again)).ok());
  auto after = m.snapshot();
  EXPECT_NE(before.get(), after.get());  // a new table was published...
  EXPECT_EQ(before->regions()[0].host, after->regions()[0].host);  // ...same mapping
  EXPECT_TRUE(l.added.empty());
  EXPECT_TRUE(l.removed.empty());
  m.remove_listener(&l);
}

TEST(GuestMemory, OldSnapshotStaysValidAfterReplacement) {
  GuestMemory m;
  ASSERT_TRUE(set_one(m, spec(0x0, 0x2000, 0x100000)).ok());
  auto old = m.snapshot();
  std::byte* p = old->translate_exact(0x10, 1).value();
  ASSERT_TRUE(set_one(m, spec(0x0, 0x2000, 0x300000)).ok());  // different uva: remapped
  *p = std::byte{7};  // a worker still holding the old table may touch it
  EXPECT_EQ(*p, std::byte{7});
}

TEST(GuestMemory, DetectsHugetlbfs) {
  const char* dir = "/dev/hugepages";
  std::string path = std::string(dir) + "/sluice-test-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) GTEST_SKIP() << "no hugetlbfs mount at " << dir;
  ::unlink(path.c_str());
  UniqueFd f(fd);
  long huge = 2 << 20;
  if (::ftruncate(fd, huge) != 0) GTEST_SKIP() << "no free huge pages";
  GuestMemory m;
  RegionSpec s;
  s.size = static_cast<uint64_t>(huge);
  s.user_addr = 0x40000000;
  s.fd = std::move(f);
  Status st = set_one(m, std::move(s));
  if (!st.ok()) GTEST_SKIP() << "cannot map a huge page: " << st.error().name();
  EXPECT_TRUE(m.snapshot()->regions()[0].hugetlbfs);
  EXPECT_GE(m.snapshot()->regions()[0].page_size, 2u << 20);
}

TEST(GuestMemory, MemfdIsNotHugetlbfs) {
  test::MockGuest g;
  EXPECT_FALSE(g.table()->regions()[0].hugetlbfs);
  EXPECT_EQ(g.table()->regions()[0].page_size, static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
}

}  // namespace
}  // namespace sluice
