// virtio-blk over io_uring, end to end in process: a mock driver's requests go
// through a real worker to a real file and back.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "dataplane/blk/blk_device.h"
#include "tests/support/mock_guest.h"
#include "tests/support/vhost_frontend.h"

namespace sluice::blk {
namespace {

using virtq::DriverBuf;
using virtq::UsedBuf;

std::string temp_path(const char* dir = "/tmp") {
  std::string p = std::string(dir) + "/sluice-blk-XXXXXX";
  std::vector<char> tmpl(p.begin(), p.end());
  tmpl.push_back('\0');
  int fd = ::mkstemp(tmpl.data());
  EXPECT_GE(fd, 0);
  ::close(fd);
  ::unlink(tmpl.data());
  return tmpl.data();
}

struct Rig {
  static inline const char* dir = "/tmp";  // tests may switch to a memory file system
  std::string path = temp_path(dir);
  Worker worker{WorkerOptions{.name = "t", .poll_us = 200, .busy_time = true}};
  std::unique_ptr<BlkDevice> dev;
  test::MockGuest g;
  struct Q {
    std::unique_ptr<test::MockDriver> drv;
    virtq::SplitQueue q;
    UniqueFd kick, call;
  };
  std::vector<std::unique_ptr<Q>> qs;

  explicit Rig(BlkOptions o = {}, uint16_t nq = 1, test::QueueLayout l = {.size = 128})
      : Rig(nullptr, {{0x100000, 32u << 20}}, o, nq, l) {}
  // A tenant of its own guest memory, served by `shared` (another rig's
  // worker) when given.
  Rig(Worker* shared, std::vector<test::MockRegion> regions, BlkOptions o = {}, uint16_t nq = 1,
      test::QueueLayout l = {.size = 128})
      : g(std::move(regions)) {
    if (shared == nullptr) {
      EXPECT_TRUE(worker.start().ok());
    }
    o.file = path;
    if (o.size == 0) o.size = 8u << 20;
    o.queues = nq;
    auto d = BlkDevice::open(o, {shared != nullptr ? shared : &worker});
    EXPECT_TRUE(d.ok()) << d.error().name();
    dev = std::move(d.value());
    for (uint16_t i = 0; i < nq; ++i) {
      auto q = std::make_unique<Q>();
      q->drv = std::make_unique<test::MockDriver>(g, l);
      EXPECT_TRUE(q->q.configure(q->drv->device_config()).ok());
      EXPECT_TRUE(q->q.attach(g.table()).ok());
      q->q.set_base(0);
      q->kick = test::make_eventfd();
      q->call = test::make_eventfd();
      EXPECT_TRUE(dev->queue_started({i, &q->q, q->kick.get(), q->call.get()}).ok());
      qs.push_back(std::move(q));
    }
  }
  ~Rig() {
    dev.reset();
    worker.stop();
    ::unlink(path.c_str());
  }
  test::MockDriver& drv(uint16_t i = 0) { return *qs[i]->drv; }
  void kick(uint16_t i = 0) {
    drv(i).ring().publish();
    uint64_t one = 1;
    (void)!::write(qs[i]->kick.get(), &one, sizeof one);
  }
  // Adds a request: header, data buffers, status. Returns the status address.
  uint64_t add(uint32_t type, uint64_t sector, uint64_t data, uint32_t len, uint16_t qi = 0,
               uint64_t token = 0) {
    uint64_t h = g.alloc(16), st = g.alloc(1);
    ReqHeader hdr{type, 0, sector};
    g.write(h, std::as_bytes(std::span(&hdr, 1)));
    g.fill(st, 1, 0xff);
    std::vector<DriverBuf> b{{h, 16, false}};
    if (len) b.push_back({data, len, type == kTIn || type == kTGetId});
    b.push_back({st, 1, true});
    EXPECT_TRUE(drv(qi).ring().add(b, false, token).ok());
    return st;
  }
  // Waits for n used buffers on queue qi.
  std::vector<UsedBuf> wait(size_t n, uint16_t qi = 0) {
    std::vector<UsedBuf> out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      UsedBuf u{};
      auto r = drv(qi).ring().get_used(u);
      EXPECT_TRUE(r.ok());
      if (r.ok() && r.value())
        out.push_back(u);
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    EXPECT_EQ(out.size(), n);
    return out;
  }
  uint8_t status(uint64_t st) { return static_cast<uint8_t>(*g.host(st)); }
  // The front-end shrinks the file behind guest region i to `bytes`.
  void shrink_region(size_t i, off_t bytes) {
    ASSERT_EQ(::ftruncate(g.table()->regions()[i].backing->fd.get(), bytes), 0);
  }
  std::vector<uint8_t> file_bytes(uint64_t off, size_t n) {
    std::vector<uint8_t> v(n);
    int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_EQ(::pread(fd, v.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
    ::close(fd);
    return v;
  }
};

TEST(BlkDevice, WriteThenReadBackThroughTheFile) {
  Rig r;
  uint64_t out = r.g.alloc(8192, 4096), in = r.g.alloc(8192, 4096);
  std::mt19937 rng(1);
  std::vector<uint8_t> pat(8192);
  for (auto& b : pat) b = static_cast<uint8_t>(rng());
  r.g.write(out, std::as_bytes(std::span(pat)));
  uint64_t st = r.add(kTOut, 16, out, 8192);
  r.kick();
  auto u = r.wait(1);
  EXPECT_EQ(r.status(st), kSOk);
  EXPECT_EQ(u[0].len, 1u);  // only the status byte was written
  EXPECT_EQ(r.file_bytes(16 * 512, 8192), pat);
  st = r.add(kTIn, 16, in, 8192);
  r.kick();
  u = r.wait(1);
  EXPECT_EQ(r.status(st), kSOk);
  EXPECT_EQ(u[0].len, 8193u);
  EXPECT_EQ(std::memcmp(r.g.host(in), pat.data(), pat.size()), 0);
  EXPECT_EQ(r.dev->stats(0).requests.load(), 2u);
  EXPECT_EQ(r.dev->stats(0).write_bytes.load(), 8192u);
}

TEST(BlkDevice, MemoryFileSystemCopiesInline) {
  // tmpfs: no O_DIRECT (pointless there) and reads/writes done inline by the
  // worker instead of by io_uring's threads. Same results expected.
  struct stat st{};
  if (::stat("/dev/shm", &st) != 0) GTEST_SKIP() << "no /dev/shm";
  Rig::dir = "/dev/shm";
  {
    Rig r;
    EXPECT_FALSE(r.dev->direct_io());
    uint64_t out = r.g.alloc(4096, 4096), in = r.g.alloc(4096, 4096);
    r.g.fill(out, 4096, 0x3c);
    uint64_t st1 = r.add(kTOut, 8, out, 4096);
    r.kick();
    r.wait(1);
    uint64_t st2 = r.add(kTIn, 8, in, 4096);
    r.kick();
    r.wait(1);
    EXPECT_EQ(r.status(st1), kSOk);
    EXPECT_EQ(r.status(st2), kSOk);
    EXPECT_EQ(std::memcmp(r.g.host(in), r.g.host(out), 4096), 0);
    EXPECT_EQ(r.file_bytes(8 * 512, 4096), std::vector<uint8_t>(4096, 0x3c));
  }
  Rig::dir = "/tmp";
}

TEST(BlkDevice, FlushGetIdDiscardWriteZeroes) {
  Rig r(BlkOptions{.serial = "disk-serial-01"});
  uint64_t out = r.g.alloc(4096, 4096);
  r.g.fill(out, 4096, 0x5a);
  r.add(kTOut, 0, out, 4096);
  uint64_t st_flush = r.add(kTFlush, 0, 0, 0);
  uint64_t id = r.g.alloc(20);
  uint64_t st_id = r.add(kTGetId, 0, id, 20);
  r.kick();
  r.wait(3);
  EXPECT_EQ(r.status(st_flush), kSOk);
  EXPECT_EQ(r.status(st_id), kSOk);
  EXPECT_EQ(std::memcmp(r.g.host(id), "disk-serial-01", 14), 0);
  // Write zeroes over the pattern, then discard.
  uint64_t seg = r.g.alloc(16);
  DiscardSegment s{0, 4, 0};
  r.g.write(seg, std::as_bytes(std::span(&s, 1)));
  uint64_t h = r.g.alloc(16), st = r.g.alloc(1);
  ReqHeader hdr{kTWriteZeroes, 0, 0};
  r.g.write(h, std::as_bytes(std::span(&hdr, 1)));
  ASSERT_TRUE(r.drv().ring().add(std::vector<DriverBuf>{{h, 16, false}, {seg, 16, false}, {st, 1, true}}, false).ok());
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st), kSOk);
  auto bytes = r.file_bytes(0, 4096);
  EXPECT_EQ(std::count(bytes.begin(), bytes.begin() + 2048, 0), 2048);  // 4 sectors zeroed
  EXPECT_EQ(bytes[2048], 0x5a);                                         // the rest kept
}

TEST(BlkDevice, ErrorsAreReportedInTheStatus) {
  Rig r;
  uint64_t buf = r.g.alloc(4096, 4096);
  uint64_t st_range = r.add(kTIn, (8u << 20) / 512, buf, 512);  // one past the end
  uint64_t st_unsupp = r.add(2, 0, 0, 0);
  uint64_t st_unaligned = r.add(kTIn, 0, buf, 100);
  r.kick();
  r.wait(3);
  EXPECT_EQ(r.status(st_range), kSIoErr);
  EXPECT_EQ(r.status(st_unsupp), kSUnsupp);
  EXPECT_EQ(r.status(st_unaligned), kSIoErr);
  EXPECT_EQ(r.dev->stats(0).errors.load(), 3u);
  // And the queue keeps serving.
  uint64_t ok = r.add(kTIn, 0, buf, 4096);
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(ok), kSOk);
}

TEST(BlkDevice, ReadOnlyExportRefusesWrites) {
  std::string path = temp_path();
  {
    int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
    ::close(fd);
  }
  Worker w{WorkerOptions{}};
  ASSERT_TRUE(w.start().ok());
  auto d = BlkDevice::open(BlkOptions{.file = path, .read_only = true}, {&w});
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE((*d)->device_features() & (1ull << kFRo));
  EXPECT_FALSE((*d)->device_features() & (1ull << kFDiscard));
  d->reset();
  w.stop();
  ::unlink(path.c_str());
}

TEST(BlkDevice, ManyInFlightOnTwoQueues) {
  Rig r({}, 2, {.size = 512});  // 100 three-descriptor chains per queue
  std::mt19937 rng(7);
  constexpr int kPerQueue = 100;
  std::vector<std::vector<uint8_t>> pats;
  for (uint16_t q = 0; q < 2; ++q)
    for (int i = 0; i < kPerQueue; ++i) {
      uint64_t buf = r.g.alloc(4096, 4096);
      std::vector<uint8_t> p(4096);
      for (auto& b : p) b = static_cast<uint8_t>(rng());
      r.g.write(buf, std::as_bytes(std::span(p)));
      r.add(kTOut, static_cast<uint64_t>(q * kPerQueue + i) * 8, buf, 4096, q);
      pats.push_back(std::move(p));
    }
  r.kick(0);
  r.kick(1);
  r.wait(kPerQueue, 0);
  r.wait(kPerQueue, 1);
  for (int i = 0; i < 2 * kPerQueue; ++i)
    ASSERT_EQ(r.file_bytes(static_cast<uint64_t>(i) * 4096, 4096), pats[static_cast<size_t>(i)]) << i;
}

TEST(BlkDevice, StopWaitsForInFlightRequests) {
  Rig r({}, 1, {.size = 256});
  uint64_t buf = r.g.alloc(64 * 4096, 4096);
  for (int i = 0; i < 64; ++i) r.add(kTOut, static_cast<uint64_t>(i) * 8, buf + static_cast<uint64_t>(i) * 4096, 4096);
  r.kick();
  // Stop right away: when it returns, every request the worker took is
  // complete and published, and the worker no longer touches the queue.
  r.dev->queue_stopped(0);
  uint16_t base = r.qs[0]->q.stop();
  uint16_t used = r.drv().peek_used_idx();
  EXPECT_EQ(used, base);  // nothing popped is left unanswered
  // Whatever was not popped yet is still available for a restart.
  EXPECT_LE(base, 64);
}

TEST(BlkDevice, SleepsAndWakesOnKick) {
  Rig r;
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // well past the poll budget
  uint64_t sleeps = r.worker.sleeps();
  EXPECT_GT(sleeps, 0u);
  uint64_t buf = r.g.alloc(4096, 4096);
  uint64_t st = r.add(kTIn, 0, buf, 4096);
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st), kSOk);
  // The interrupt was raised on the call eventfd.
  uint64_t v = 0;
  EXPECT_EQ(::read(r.qs[0]->call.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
  EXPECT_GE(v, 1u);
}

// Busy time counts the loops that found work, not idle polling or sleep.
TEST(BlkDevice, BusyTimeCountsOnlyLoopsThatFoundWork) {
  Rig r;
  std::this_thread::sleep_for(std::chrono::milliseconds(30));  // idle: polls, then sleeps
  uint64_t idle_busy = r.worker.busy_ns();
  EXPECT_LT(idle_busy, 5'000'000u);  // at most the start-up commands' loops
  uint64_t buf = r.g.alloc(4096, 4096);
  for (int i = 0; i < 8; ++i) {
    uint64_t st = r.add(kTIn, 0, buf, 4096);
    r.kick();
    ASSERT_EQ(r.wait(1).size(), 1u);
    EXPECT_EQ(r.status(st), kSOk);
  }
  uint64_t busy = r.worker.busy_ns();
  EXPECT_GT(busy, idle_busy);
  EXPECT_LT(busy, r.worker.uptime_ns());
}

// Guest memory that faults (dataplane/memory/guest_fault.h). Region 1 is
// where the hostile front-end cuts its file; the rings stay in region 0.
constexpr uint64_t kRegion1 = 0x4000000;

TEST(BlkDeviceFault, RequestsOnAFaultedPageFailTheQueueGoesOn) {
  Rig r(nullptr, {{0x100000, 32u << 20}, {kRegion1, 1 << 20}});
  // A write whose header lies in region 1, and the page holding it.
  uint64_t hdr = kRegion1 + 4096, st = r.g.alloc(1), good = r.g.alloc(4096, 4096);
  ReqHeader h{kTOut, 0, 0};
  r.g.write(hdr, std::as_bytes(std::span(&h, 1)));
  r.g.fill(st, 1, 0xff);
  r.shrink_region(1, 0);
  std::vector<DriverBuf> bufs{{hdr, 16, false}, {good, 4096, false}, {st, 1, true}};
  ASSERT_TRUE(r.drv().ring().add(bufs, false).ok());
  const uint64_t total0 = fault::total();
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st), kSIoErr);  // the header faulted: never executed
  EXPECT_EQ(fault::total(), total0 + 1);
  // The page is poisoned: a read into it fails at once, without a signal
  // (the kernel would otherwise fill our zero page, not the guest's).
  uint64_t st2 = r.add(kTIn, 0, kRegion1 + 4096 + 512, 512);
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st2), kSIoErr);
  EXPECT_EQ(fault::total(), total0 + 1);
  // Another page of the cut region: the kernel meets the fault (EFAULT).
  uint64_t st3 = r.add(kTIn, 0, kRegion1 + 65536, 512);
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st3), kSIoErr);
  // Memory that is still there is served as before, on the same queue.
  uint64_t st4 = r.add(kTOut, 8, good, 4096);
  r.kick();
  r.wait(1);
  EXPECT_EQ(r.status(st4), kSOk);
  const BlkQueueStats& s = r.dev->stats(0);
  EXPECT_EQ(s.guest_faults.load(), 3u);
  EXPECT_FALSE(s.broken.load());
  // Both pages are recorded: the one our header read met, and the one the
  // kernel met (found by touching the failed request's pages).
  const fault::PoisonList& pl = r.g.table()->poison();
  ASSERT_EQ(pl.size(), 2u);
  EXPECT_EQ(pl.at(0).gpa, kRegion1 + 4096);
  EXPECT_EQ(pl.at(0).cause, fault::Cause::kNoBacking);
  EXPECT_EQ(pl.at(1).gpa, kRegion1 + 65536);
}

// One tenant's rings vanish: its queue is broken, naming the guest address;
// a second tenant on the same worker keeps its I/O going, verified.
TEST(BlkDeviceFault, RingFaultBreaksOneTenantNotTheOther) {
  Rig good;
  Rig bad(&good.worker, {{0x100000, 32u << 20}});
  std::vector<uint8_t> pat(4096, 0x3c);
  uint64_t buf = good.g.alloc(4096, 4096), back = good.g.alloc(4096, 4096);
  good.g.write(buf, std::as_bytes(std::span(pat)));
  // The request is published before the cut; the worker finds the rings
  // gone (this test's own thread touches nothing of them after the cut: it
  // would take the fault itself, the mapping being one).
  (void)bad.add(kTIn, 0, bad.g.alloc(512), 512);
  bad.drv().ring().publish();
  bad.shrink_region(0, 0);  // everything, rings included
  uint64_t one = 1;
  ASSERT_EQ(::write(bad.qs[0]->kick.get(), &one, sizeof one), 8);
  for (int round = 0; round < 20; ++round) {
    uint64_t st = good.add(kTOut, 64, buf, 4096);
    good.kick();
    good.wait(1);
    ASSERT_EQ(good.status(st), kSOk);
    st = good.add(kTIn, 64, back, 4096);
    good.kick();
    good.wait(1);
    ASSERT_EQ(good.status(st), kSOk);
    ASSERT_EQ(std::memcmp(good.g.host(back), pat.data(), pat.size()), 0);
    if (bad.dev->stats(0).broken.load()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const BlkQueueStats& s = bad.dev->stats(0);
  ASSERT_TRUE(s.broken.load());
  EXPECT_EQ(s.broken_reason.load(), Errc::kGuestMemoryFault);
  EXPECT_GE(s.fault_gpa.load(), 0x100000u);
  EXPECT_LT(s.fault_gpa.load(), 0x100000u + (1 << 20));
  EXPECT_FALSE(good.dev->stats(0).broken.load());
  EXPECT_EQ(good.dev->stats(0).guest_faults.load(), 0u);
}

}  // namespace
}  // namespace sluice::blk
