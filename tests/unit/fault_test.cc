// Guest memory that faults: a SIGBUS in guest memory is survived, recorded
// for the thread, and attributed by the queue (ring: broken, naming the
// guest address; buffer: the page is poisoned); a SIGBUS anywhere else still
// ends the process. Real faults throughout: memfds shrunk under their
// mapping, and guest_memfd pages the guest has not shared.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <string>
#include <cstring>

#include <gtest/gtest.h>

#include "dataplane/memory/guest_fault.h"
#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

namespace sluice {
namespace {

using test::make_memfd;

// Reads one byte through a volatile pointer (the compiler must not drop it).
uint8_t touch(const std::byte* p) { return *reinterpret_cast<const volatile uint8_t*>(p); }

// Takes (and drops) faults earlier tests left pending on this thread.
void clear_pending() {
  fault::Fault f[fault::ThreadFaults::kRecent];
  (void)fault::take(f);
}

int backing_fd(const test::MockGuest& g, size_t region) {
  return g.table()->regions()[region].backing->fd.get();
}

TEST(GuestFault, ShrunkMemfdReadsZeroesAndIsRecorded) {
  test::MockGuest g({{0x100000, 1 << 20}});
  std::byte* p = g.host(0x100000 + 8192 + 100);
  std::memset(p, 0x5a, 16);
  ASSERT_EQ(touch(p), 0x5a);
  ASSERT_EQ(::ftruncate(backing_fd(g, 0), 4096), 0);  // the front-end shrinks its memory
  clear_pending();
  const uint64_t before = fault::count(), total = fault::total();
  EXPECT_FALSE(fault::pending());
  EXPECT_EQ(touch(p), 0);  // survived: the page now reads as zeroes
  EXPECT_EQ(touch(p), 0);  // and faults no more
  EXPECT_EQ(fault::count(), before + 1);
  EXPECT_EQ(fault::total(), total + 1);
  EXPECT_TRUE(fault::pending());
  fault::Fault f[fault::ThreadFaults::kRecent];
  ASSERT_EQ(fault::take(f), 1u);
  EXPECT_FALSE(fault::pending());
  EXPECT_EQ(fault::take(f), 0u);
  EXPECT_EQ(f[0].addr, reinterpret_cast<uintptr_t>(p));
  EXPECT_EQ(f[0].page, reinterpret_cast<uintptr_t>(p) & ~uintptr_t{4095});
  EXPECT_EQ(f[0].page_size, 4096u);
  EXPECT_EQ(f[0].cause, fault::Cause::kNoBacking);
  EXPECT_EQ(fault::cause_name(f[0].cause), "no-backing-page");
  // A write lands on the private page; the page before the cut is untouched.
  p[1] = std::byte{7};
  EXPECT_EQ(touch(p + 1), 7);
  EXPECT_EQ(fault::count(), before + 1);
}

TEST(GuestFault, WritesFaultToo) {
  test::MockGuest g({{0x100000, 1 << 20}});
  std::byte* p = g.host(0x100000 + 65536);
  ASSERT_EQ(::ftruncate(backing_fd(g, 0), 0), 0);
  const uint64_t before = fault::count();
  reinterpret_cast<volatile uint8_t*>(p)[0] = 1;
  EXPECT_EQ(fault::count(), before + 1);
}

// Outside every guarded range a bus error means what it always did.
TEST(GuestFaultDeathTest, UnguardedBusErrorStillEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  UniqueFd fd = make_memfd(8192);
  void* m = ::mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(m, MAP_FAILED);
  ASSERT_EQ(::ftruncate(fd.get(), 0), 0);
  fault::install();
  EXPECT_EXIT(touch(static_cast<std::byte*>(m)), testing::KilledBySignal(SIGBUS), "");
  ::munmap(m, 8192);
}

TEST(GuestFaultDeathTest, SigbusSentByAProcessStillEndsIt) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  fault::install();
  EXPECT_EXIT(::kill(::getpid(), SIGBUS), testing::KilledBySignal(SIGBUS), "");
}

TEST(GuestFaultDeathTest, GuardGoneMeansUnguarded) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  UniqueFd fd = make_memfd(4096);
  void* m = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(m, MAP_FAILED);
  { fault::Guard gd(m, 4096, 4096); }
  ASSERT_EQ(::ftruncate(fd.get(), 0), 0);
  EXPECT_EXIT(touch(static_cast<std::byte*>(m)), testing::KilledBySignal(SIGBUS), "");
  ::munmap(m, 4096);
}

TEST(PoisonList, AddTouchesAndBound) {
  fault::PoisonList l;
  EXPECT_TRUE(l.empty());
  EXPECT_TRUE(l.add({0x1000, 0x10000, 4096, fault::Cause::kHwPoison}));
  EXPECT_FALSE(l.add({0x1000, 0x10000, 4096, fault::Cause::kHwPoison}));  // known
  EXPECT_EQ(l.size(), 1u);
  auto* p = reinterpret_cast<const void*>(uintptr_t{0x10000});
  EXPECT_TRUE(l.touches(p, 1));
  EXPECT_TRUE(l.touches(reinterpret_cast<const void*>(uintptr_t{0xffff}), 2));
  EXPECT_FALSE(l.touches(reinterpret_cast<const void*>(uintptr_t{0xffff}), 1));
  EXPECT_FALSE(l.touches(reinterpret_cast<const void*>(uintptr_t{0x11000}), 4096));
  EXPECT_EQ(l.at(0).gpa, 0x1000u);
  EXPECT_EQ(l.at(0).cause, fault::Cause::kHwPoison);
  for (uint32_t i = 1; i < fault::PoisonList::kMax; ++i)
    EXPECT_TRUE(l.add({i * 4096ull, 0x100000ull + i * 4096, 4096, fault::Cause::kNoBacking}));
  EXPECT_FALSE(l.full());
  EXPECT_TRUE(l.add({1ull << 40, 1ull << 40, 4096, fault::Cause::kNoBacking}));
  EXPECT_TRUE(l.full());  // past the bound: every request is refused
  EXPECT_TRUE(l.touches(reinterpret_cast<const void*>(uintptr_t{0x900000000}), 1));
}

// The queue's rings in region 0, buffers in region 1: each can fault alone.
struct Rig {
  test::MockGuest g{{{0x100000, 4 << 20}, {0x800000, 1 << 20}}};
  test::MockDriver d{g, test::QueueLayout{.size = 16}};
  virtq::SplitQueue q;
  virtq::Chain c;
  Rig() {
    EXPECT_TRUE(q.configure(d.device_config()).ok());
    EXPECT_TRUE(q.attach(g.table()).ok());
    q.set_base(0);
  }
  // Region 0 holds the rings and the driver's arena; what is left of it is
  // used up first, so the next block comes from region 1.
  uint64_t buf_in_region1(uint64_t len) {
    uint64_t a = g.alloc(len, 4096);
    while (a < 0x800000) a = g.alloc(len, 4096);
    return a;
  }
};

TEST(GuestFault, BufferFaultPoisonsThePageAndLaterChainsSeeIt) {
  Rig r;
  uint64_t b = r.buf_in_region1(64);
  const uint32_t len[] = {64};
  r.d.add_chain(len, {});
  r.d.ring().publish();
  ASSERT_FALSE(r.q.memory_poisoned());
  ASSERT_EQ(::ftruncate(backing_fd(r.g, 1), 0), 0);
  clear_pending();
  (void)touch(r.g.host(b));
  EXPECT_EQ(r.q.take_faults(), virtq::SplitQueue::FaultHit::kBuffer);
  EXPECT_FALSE(r.q.broken());
  ASSERT_TRUE(r.q.memory_poisoned());
  const fault::PoisonList& pl = r.g.table()->poison();
  ASSERT_EQ(pl.size(), 1u);
  EXPECT_EQ(pl.at(0).gpa, b & ~uint64_t{4095});
  // The chain popped next lies in region 0 (the mock driver's own buffer):
  // clean. A chain into the poisoned page is seen as such, without a fault.
  auto p = r.q.pop(r.c);
  ASSERT_TRUE(p.ok() && p.value());
  EXPECT_FALSE(r.q.chain_poisoned(r.c));
  r.d.add_chain({}, len);
  r.d.poke_desc(r.c.head(), virtq::Desc{b, 64, virtq::kDescFWrite, 0});
  r.d.poke_avail_entry(1, r.c.head());
  r.d.poke_avail_idx(2);
  const uint64_t f0 = fault::count();
  p = r.q.pop(r.c);
  ASSERT_TRUE(p.ok() && p.value());
  EXPECT_TRUE(r.q.chain_poisoned(r.c));
  EXPECT_EQ(fault::count(), f0);  // known: no second signal
}

TEST(GuestFault, RingFaultBreaksTheQueueNamingTheAddress) {
  Rig r;
  ASSERT_EQ(::ftruncate(backing_fd(r.g, 0), 0), 0);  // region 0 holds the rings
  clear_pending();
  const uint64_t since = fault::count();
  auto p = r.q.pop(r.c);  // the avail index faults and reads as zero: looks empty
  EXPECT_TRUE(p.ok() && !p.value());
  EXPECT_GT(fault::count(), since);
  EXPECT_EQ(r.q.take_faults(), virtq::SplitQueue::FaultHit::kRing);
  EXPECT_TRUE(r.q.broken());
  EXPECT_EQ(r.q.broken_reason(), Errc::kGuestMemoryFault);
  EXPECT_GE(r.q.fault_gpa(), 0x100000u);
  EXPECT_LT(r.q.fault_gpa(), 0x100000u + (4 << 20));
  EXPECT_EQ(r.q.fault_cause(), fault::Cause::kNoBacking);
  EXPECT_FALSE(r.q.pop(r.c).ok());
}

TEST(GuestFault, FaultOutsideTheQueuesMemory) {
  Rig r;
  UniqueFd fd = make_memfd(4096);
  void* m = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(m, MAP_FAILED);
  fault::Guard gd(m, 4096, 4096);  // e.g. an inflight region
  ASSERT_EQ(::ftruncate(fd.get(), 0), 0);
  clear_pending();
  (void)touch(static_cast<std::byte*>(m));
  EXPECT_EQ(r.q.take_faults(), virtq::SplitQueue::FaultHit::kOutside);
  EXPECT_FALSE(r.q.memory_poisoned());
  gd.reset();
  ::munmap(m, 4096);
}

TEST(GuestFault, PoisonOfARemovedRegionIsForgotten) {
  test::MockGuest g({{0x100000, 4 << 20}, {0x800000, 1 << 20}});
  ASSERT_EQ(::ftruncate(backing_fd(g, 1), 0), 0);
  clear_pending();
  (void)touch(g.host(0x800000));
  virtq::SplitQueue q;
  test::MockDriver d{g, test::QueueLayout{.size = 16}};
  ASSERT_TRUE(q.configure(d.device_config()).ok());
  ASSERT_TRUE(q.attach(g.table()).ok());
  EXPECT_EQ(q.take_faults(), virtq::SplitQueue::FaultHit::kBuffer);
  EXPECT_EQ(g.table()->poison().size(), 1u);
  auto keep = g.table()->regions()[1];
  ASSERT_TRUE(g.memory().remove_region(keep.guest_phys, keep.size, keep.user_addr).ok());
  EXPECT_TRUE(g.table()->poison().empty());
}

// guest_memfd (Linux 6.18, GUEST_MEMFD_FLAG_MMAP): how Firecracker backs
// guests. Shared pages are served like any memory; pages the guest keeps
// private fault on touch, and are survived.
struct KvmGuestMemfd {
  static constexpr uint64_t kFlagMmap = 1, kFlagInitShared = 2;
  struct Create {
    uint64_t size, flags, reserved[6];
  };
  UniqueFd kvm, vm;
  std::string why_not;
  KvmGuestMemfd() {
    kvm.reset(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm.valid()) {
      why_not = "no /dev/kvm";
      return;
    }
    vm.reset(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!vm.valid()) why_not = "KVM_CREATE_VM failed";
  }
  UniqueFd make(uint64_t size, uint64_t flags) {
    Create c{size, flags, {}};
    return UniqueFd(::ioctl(vm.get(), _IOWR(KVMIO, 0xd4, Create), &c));
  }
};

TEST(GuestFault, GuestMemfdSharedIsServedPrivateFaults) {
  KvmGuestMemfd k;
  if (!k.why_not.empty()) GTEST_SKIP() << k.why_not;
  UniqueFd shared = k.make(1 << 20, KvmGuestMemfd::kFlagMmap | KvmGuestMemfd::kFlagInitShared);
  UniqueFd priv = k.make(1 << 20, KvmGuestMemfd::kFlagMmap);
  if (!shared.valid() || !priv.valid()) GTEST_SKIP() << "kernel without guest_memfd mmap (6.18)";
  GuestMemory m;
  std::vector<RegionSpec> specs(2);
  specs[0] = RegionSpec{0x100000, 1 << 20, 0x7f0000100000, 0, std::move(shared)};
  specs[1] = RegionSpec{0x400000, 1 << 20, 0x7f0000400000, 0, std::move(priv)};
  ASSERT_TRUE(m.set_regions(std::move(specs)).ok());
  auto t = m.snapshot();
  std::byte* s = t->translate_exact(0x100000, 8).value();
  std::byte* p = t->translate_exact(0x400000, 8).value();
  const uint64_t before = fault::count();
  reinterpret_cast<volatile uint8_t*>(s)[0] = 42;
  EXPECT_EQ(touch(s), 42);
  EXPECT_EQ(fault::count(), before);
  EXPECT_EQ(touch(p), 0);
  EXPECT_EQ(fault::count(), before + 1);
}

// A hugetlbfs file mapped without a reservation (Sluice maps guest memory
// MAP_NORESERVE) whose huge page cannot be had when first touched: here a
// hugetlbfs mount limited to one 2 MiB page, the second page of the region
// past it. The touch raises SIGBUS; it is survived like any other, with a
// huge zero page in place, and recorded with the huge page's size.
TEST(GuestFault, AHugePageThatCannotBeAllocatedIsSurvived) {
  char dir[] = "/tmp/sluice-huge-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  if (::system(("mount -t hugetlbfs -o pagesize=2M,size=2M none " + std::string(dir) + " 2>/dev/null").c_str()) != 0) {
    ::rmdir(dir);
    GTEST_SKIP() << "cannot mount a size-limited hugetlbfs (needs root and 2 MiB huge pages)";
  }
  std::string file = std::string(dir) + "/guest";
  UniqueFd fd(::open(file.c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(::ftruncate(fd.get(), 4 << 20), 0);  // two huge pages of file; the mount holds one
  {
    GuestMemory m;
    std::vector<RegionSpec> specs(1);
    specs[0] = RegionSpec{0x200000, 4 << 20, 0x7f0000200000, 0, std::move(fd)};
    ASSERT_TRUE(m.set_regions(std::move(specs)).ok());
    auto t = m.snapshot();
    ASSERT_TRUE(t->regions()[0].hugetlbfs);
    std::byte* first = t->translate_exact(0x200000, 8).value();
    std::byte* second = t->translate_exact(0x400000 + 4096, 8).value();
    clear_pending();
    const uint64_t before = fault::count();
    reinterpret_cast<volatile uint8_t*>(first)[0] = 9;  // the one page the mount has
    EXPECT_EQ(touch(first), 9);
    EXPECT_EQ(fault::count(), before);
    EXPECT_EQ(touch(second), 0);  // no page to be had: SIGBUS, survived
    EXPECT_EQ(fault::count(), before + 1);
    fault::Fault f[fault::ThreadFaults::kRecent];
    ASSERT_EQ(fault::take(f), 1u);
    EXPECT_EQ(f[0].page_size, 2u << 20);
    EXPECT_EQ(f[0].page, reinterpret_cast<uintptr_t>(second) & ~uintptr_t{(2u << 20) - 1});
  }
  EXPECT_EQ(::system(("umount " + std::string(dir)).c_str()), 0);
  ::rmdir(dir);
}

}  // namespace
}  // namespace sluice
