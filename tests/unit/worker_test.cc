// Worker: retiring a pollable whose requests never complete (a hung file or
// device) is bounded by the stop deadline, and the abandoned pollable goes
// once the kernel completes them.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "dataplane/worker/worker.h"

namespace sluice {
namespace {

// Reads from a pipe through io_uring: in flight until the test writes.
struct PipeReader final : Pollable {
  int fd;
  IoOp op{this, 0};
  char buf[8];
  bool submitted = false;
  std::atomic<unsigned> pending{0};  // the test thread waits on it too
  std::atomic<bool>* abandoned_on_worker;
  std::atomic<bool>* destroyed;
  std::thread::id worker_thread;
  PipeReader(int f, std::atomic<bool>* a, std::atomic<bool>* d) : fd(f), abandoned_on_worker(a), destroyed(d) {}
  ~PipeReader() override { destroyed->store(true); }
  unsigned poll(Worker& w, unsigned) override {
    worker_thread = std::this_thread::get_id();
    if (submitted) return 0;
    submitted = true;
    io_uring_sqe* sqe = w.get_sqe();
    io_uring_prep_read(sqe, fd, buf, sizeof buf, 0);
    io_uring_sqe_set_data(sqe, &op);
    pending = 1;
    return 1;
  }
  void complete(Worker&, IoOp*, int) override { pending = 0; }
  void end_of_burst(Worker&) override {}
  int kick_fd() const override { return -1; }
  bool arm() override { return true; }
  void disarm() override {}
  void quiesce() override {}
  unsigned inflight() const override { return pending; }
  void abandon() override { abandoned_on_worker->store(std::this_thread::get_id() == worker_thread); }
};

TEST(WorkerRetire, APollableWhoseRequestsNeverCompleteIsAbandonedAtTheDeadline) {
  Worker w{WorkerOptions{.name = "t", .poll_us = 100, .stop_timeout = std::chrono::milliseconds(200)}};
  ASSERT_TRUE(w.start().ok());
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::atomic<bool> abandoned{false}, destroyed{false};
  auto r = std::make_unique<PipeReader>(p[0], &abandoned, &destroyed);
  w.attach(r.get());
  for (int i = 0; i < 200 && r->inflight() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(w.retire(std::move(r)));
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, std::chrono::milliseconds(200));
  EXPECT_LT(waited, std::chrono::seconds(2));
  EXPECT_TRUE(abandoned.load());  // on the worker's thread
  EXPECT_FALSE(destroyed.load());  // its read is still out
  EXPECT_EQ(w.abandoned(), 1u);
  // The kernel completes the read: the worker destroys it.
  ASSERT_EQ(::write(p[1], "x", 1), 1);
  for (int i = 0; i < 400 && !destroyed.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(destroyed.load());
  EXPECT_EQ(w.abandoned(), 0u);
  w.stop();
  ::close(p[0]);
  ::close(p[1]);
}

TEST(WorkerRetire, APollableThatFinishesInTimeIsDestroyedAtOnce) {
  Worker w{WorkerOptions{.name = "t", .poll_us = 100, .stop_timeout = std::chrono::milliseconds(2000)}};
  ASSERT_TRUE(w.start().ok());
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::atomic<bool> abandoned{false}, destroyed{false};
  auto r = std::make_unique<PipeReader>(p[0], &abandoned, &destroyed);
  w.attach(r.get());
  for (int i = 0; i < 200 && r->inflight() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (void)!::write(p[1], "x", 1);
  });
  EXPECT_TRUE(w.retire(std::move(r)));
  writer.join();
  EXPECT_TRUE(destroyed.load());
  EXPECT_FALSE(abandoned.load());
  EXPECT_EQ(w.abandoned(), 0u);
  w.stop();
  ::close(p[0]);
  ::close(p[1]);
}

}  // namespace
}  // namespace sluice
