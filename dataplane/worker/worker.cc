#include "dataplane/worker/worker.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "dataplane/base/log.h"
#include "dataplane/base/tsc.h"

namespace sluice {

namespace {
uint64_t now_us() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}
}  // namespace

Worker::Worker(WorkerOptions opts) : opts_(std::move(opts)) {}

Worker::~Worker() { stop(); }

Status Worker::start() {
  cmd_efd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!cmd_efd_.valid()) return Error::from_errno(errno);
  int r = io_uring_queue_init(opts_.ring_entries, &ring_, 0);
  if (r < 0) return Error::from_errno(-r);
  ring_ok_ = true;
  cmd_poll_.fd = cmd_efd_.get();
  started_ns_.store(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count(),
                    std::memory_order_relaxed);
  tsc0_.store(read_tsc(), std::memory_order_relaxed);
  thread_ = std::thread([this] { run(); });
  return {};
}

void Worker::stop() {
  if (!thread_.joinable()) {
    if (ring_ok_) io_uring_queue_exit(&ring_);
    ring_ok_ = false;
    return;
  }
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!::write(cmd_efd_.get(), &one, sizeof one);
  thread_.join();
  io_uring_queue_exit(&ring_);
  ring_ok_ = false;
  if (!abandoned_.empty()) {
    // The kernel may still write into what they keep alive (guest memory):
    // left mapped for the rest of the process.
    LOG_WARN("worker", "%s: %zu abandoned queue(s) still have requests in the kernel at stop", opts_.name.c_str(),
             abandoned_.size());
    for (auto& a : abandoned_) (void)a.release();
    abandoned_.clear();
  }
}

void Worker::enqueue(Cmd& c) {
  cmds_.push_back(&c);
  cmd_pending_.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!::write(cmd_efd_.get(), &one, sizeof one);  // wakes a sleeping worker
}

void Worker::post(Cmd& c) {
  std::unique_lock lk(cmd_mu_);
  enqueue(c);
  cmd_cv_.wait(lk, [&] { return c.done; });
}

bool Worker::retire(std::unique_ptr<Pollable> p) {
  if (!p) return true;
  if (!thread_.joinable()) return true;  // no worker: p goes with the unique_ptr
  Cmd c{false, p.get()};
  std::unique_lock lk(cmd_mu_);
  enqueue(c);
  if (!cmd_cv_.wait_for(lk, opts_.stop_timeout, [&] { return c.done; })) {
    // Its requests are still out: the worker abandons p at its next loop
    // (a burst away: the worker itself never waits on a file or a device).
    c.abandon = true;
    c.owned = std::move(p);
    abandon_pending_.store(true, std::memory_order_release);
    uint64_t one = 1;
    (void)!::write(cmd_efd_.get(), &one, sizeof one);
    cmd_cv_.wait(lk, [&] { return c.done; });
    if (c.abandoned) return false;
    p = std::move(c.owned);  // it finished just in time after all
  }
  return true;
}

void Worker::attach(Pollable* p) {
  Cmd c{true, p};
  post(c);
}

void Worker::sync() {
  if (!thread_.joinable()) return;
  attach(nullptr);  // a command with no pollable: acknowledged at the next burst
}

void Worker::detach(Pollable* p) {
  Cmd c{false, p};
  post(c);
}

io_uring_sqe* Worker::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // The submission ring is full: hand what we have to the kernel.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Worker::signal(int call_fd) {
  if (call_fd < 0) return;
  if (std::find(to_signal_.begin(), to_signal_.end(), call_fd) == to_signal_.end())
    to_signal_.push_back(call_fd);
}

void Worker::handle_commands() {
  std::vector<Cmd*> cmds;
  {
    std::lock_guard lk(cmd_mu_);
    cmds.swap(cmds_);
    cmd_pending_.store(false, std::memory_order_relaxed);
  }
  for (Cmd* c : cmds) {
    if (c->p == nullptr) {  // sync()
      std::lock_guard lk(cmd_mu_);
      c->done = true;
      cmd_cv_.notify_all();
      continue;
    }
    if (c->attach) {
      pollables_.push_back(c->p);
      if (c->p->kick_fd() >= 0) {
        auto k = std::make_unique<KickPoll>();
        k->target = c->p;
        k->fd = c->p->kick_fd();
        kicks_.push_back(std::move(k));
      }
      std::lock_guard lk(cmd_mu_);
      c->done = true;
      cmd_cv_.notify_all();
    } else {
      c->p->quiesce();
      detaching_.push_back(c->p);
      pending_detach_cmds_.push_back(c);
    }
  }
}

void Worker::forget(Pollable* p) {
  pollables_.erase(std::remove(pollables_.begin(), pollables_.end(), p), pollables_.end());
  // Its kick poll may still be armed in the ring: orphan it (the completion
  // frees it) and ask the kernel to cancel it.
  for (auto& k : kicks_) {
    if (k && k->target == p) {
      k->target = nullptr;
      if (k->armed) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_poll_remove(sqe, reinterpret_cast<uint64_t>(&k->op));
        io_uring_sqe_set_data(sqe, nullptr);
        orphans_.push_back(std::move(k));  // freed when its poll completes
      } else {
        k.reset();
      }
    }
  }
  kicks_.erase(std::remove(kicks_.begin(), kicks_.end(), nullptr), kicks_.end());
}

void Worker::abandon_overdue() {
  abandon_pending_.store(false, std::memory_order_relaxed);
  std::lock_guard lk(cmd_mu_);
  for (size_t j = 0; j < pending_detach_cmds_.size();) {
    Cmd* c = pending_detach_cmds_[j];
    if (!c->abandon) {
      ++j;
      continue;
    }
    Pollable* p = c->p;
    forget(p);
    detaching_.erase(std::remove(detaching_.begin(), detaching_.end(), p), detaching_.end());
    p->abandon();
    settle_faults(p);
    LOG_WARN("worker", "%s: a queue's %u request(s) did not complete within %lld ms: abandoned (its ring is "
             "no longer served; the requests are reaped when the kernel completes them)",
             opts_.name.c_str(), p->inflight(), static_cast<long long>(opts_.stop_timeout.count()));
    abandoned_.push_back(std::move(c->owned));
    abandoned_count_.store(abandoned_.size(), std::memory_order_relaxed);
    c->abandoned = true;
    c->done = true;
    pending_detach_cmds_.erase(pending_detach_cmds_.begin() + static_cast<long>(j));
  }
  cmd_cv_.notify_all();
}

void Worker::finish_detaches() {
  for (size_t i = 0; i < detaching_.size();) {
    Pollable* p = detaching_[i];
    if (p->inflight() != 0) {
      ++i;
      continue;
    }
    p->end_of_burst(*this);
    settle_faults(p);
    forget(p);
    detaching_.erase(detaching_.begin() + static_cast<long>(i));
    for (size_t j = 0; j < pending_detach_cmds_.size(); ++j) {
      if (pending_detach_cmds_[j]->p != p) continue;
      std::lock_guard lk(cmd_mu_);
      pending_detach_cmds_[j]->done = true;
      cmd_cv_.notify_all();
      pending_detach_cmds_.erase(pending_detach_cmds_.begin() + static_cast<long>(j));
      break;
    }
  }
}

void Worker::reap() {
  io_uring_cqe* cqe;
  unsigned head;
  unsigned n = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++n;
    auto* op = static_cast<IoOp*>(io_uring_cqe_get_data(cqe));
    if (op == nullptr) continue;  // a poll_remove's own completion
    if (op->owner != nullptr) {
      op->owner->complete(*this, op, cqe->res);
      settle_faults(op->owner);
      continue;
    }
    // A kick or command poll. SAFETY: every IoOp with no owner is the first
    // member of a KickPoll (standard layout, so the pointers interconvert).
    auto* k = reinterpret_cast<KickPoll*>(op);
    k->armed = false;
    if (k == &cmd_poll_ || k->target != nullptr) {
      if (cqe->res > 0 && (cqe->res & POLLIN)) {
        uint64_t v;
        (void)!::read(k->fd, &v, sizeof v);  // POLLIN: the read does not block
      }
    } else {
      // Orphaned by a detach: its completion is the last use.
      orphans_.erase(std::remove_if(orphans_.begin(), orphans_.end(),
                                    [k](const auto& o) { return o.get() == k; }),
                     orphans_.end());
    }
  }
  io_uring_cq_advance(&ring_, n);
}

void Worker::end_burst() {
  bool published = false;
  for (Pollable* p : pollables_) {
    if (p->two_phase())
      published |= p->publish_used();
    else
      p->end_of_burst(*this);
    settle_faults(p);
  }
  if (published) {
    // One fence for every two-phase queue: their used indexes are stored
    // before any of them reads its driver's interrupt suppression (2.7.10).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (Pollable* p : pollables_) {
      if (!p->two_phase()) continue;
      p->signal_needed(*this);
      settle_faults(p);
    }
  }
  for (int fd : to_signal_) {
    uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
  }
  to_signal_.clear();
}

void Worker::sleep() {
  size_t armed = 0;
  for (; armed < pollables_.size(); ++armed) {
    const bool ok = pollables_[armed]->arm();
    settle_faults(pollables_[armed]);
    if (!ok) break;
  }
  if (armed != pollables_.size()) {
    for (size_t i = 0; i <= armed && i < pollables_.size(); ++i) {
      pollables_[i]->disarm();
      settle_faults(pollables_[i]);
    }
    return;  // work arrived while arming
  }
  for (auto& k : kicks_) {
    if (k->armed) continue;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_add(sqe, k->fd, POLLIN);
    io_uring_sqe_set_data(sqe, &k->op);
    k->armed = true;
  }
  if (!cmd_poll_.armed) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_poll_add(sqe, cmd_poll_.fd, POLLIN);
    io_uring_sqe_set_data(sqe, &cmd_poll_.op);
    cmd_poll_.armed = true;
  }
  if (!cmd_pending_.load(std::memory_order_acquire) && !stop_.load(std::memory_order_acquire)) {
    sleeps_.fetch_add(1, std::memory_order_relaxed);
    auto t0 = std::chrono::steady_clock::now();
    io_uring_submit_and_wait(&ring_, 1);
    sleep_ns_.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                  std::chrono::steady_clock::now() - t0)
                                                  .count()),
                        std::memory_order_relaxed);
  } else {
    io_uring_submit(&ring_);
  }
  for (Pollable* p : pollables_) {
    p->disarm();
    settle_faults(p);
  }
}

uint64_t Worker::uptime_ns() const noexcept {
  int64_t t0 = started_ns_.load(std::memory_order_relaxed);
  if (t0 == 0) return 0;
  int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now().time_since_epoch())
                    .count();
  return static_cast<uint64_t>(now - t0);
}

uint64_t Worker::busy_ns() const noexcept {
  uint64_t up = uptime_ns();
  uint64_t elapsed = read_tsc() - tsc0_.load(std::memory_order_relaxed);
  if (up == 0 || elapsed == 0) return 0;
  double ns_per_tick = static_cast<double>(up) / static_cast<double>(elapsed);
  return static_cast<uint64_t>(static_cast<double>(busy_ticks_.load(std::memory_order_relaxed)) * ns_per_tick);
}

void Worker::hand_faults(Pollable* p) {
  p->on_guest_fault();
  fault::Fault f[fault::ThreadFaults::kRecent];
  const size_t n = fault::take(f);
  for (size_t i = 0; i < n; ++i)
    LOG_WARN("worker", "guest memory fault at %p (%.*s) not claimed by its queue",
             reinterpret_cast<void*>(f[i].addr), static_cast<int>(fault::cause_name(f[i].cause).size()),
             fault::cause_name(f[i].cause).data());
}

bool Worker::any_inflight() const {
  for (Pollable* p : pollables_)
    if (p->inflight() != 0) return true;
  return false;
}

void Worker::run() {
  if (opts_.cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(opts_.cpu), &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
      LOG_WARN("worker", "%s: cannot pin to CPU %d", opts_.name.c_str(), opts_.cpu);
  }
  // When the current idle stretch began, and how many idle bursts it has
  // had. The clock is read only on idle bursts, and of those only on the
  // first of a stretch and every kIdleCheck-th after it: a vDSO clock read
  // costs 20-50 ns on a VM (8% of the worker's samples in a 64 B plain
  // loopback, where most bursts between the driver's find nothing), and
  // each one delays the poll that finds the driver's next frames.
  constexpr uint32_t kIdleCheck = 32;
  uint64_t idle_since = 0;
  uint32_t idle_polls = 0;
  // Busy-time accounting (opt-in): measured on a VM here, the time-stamp
  // read every loop cost 5-10% of a full loopback's rate.
  const bool busy_time = opts_.busy_time;
  uint64_t loop_start = busy_time ? read_tsc() : 0;
  while (!stop_.load(std::memory_order_acquire)) {
    if (cmd_pending_.load(std::memory_order_acquire)) handle_commands();
    if (abandon_pending_.load(std::memory_order_acquire)) [[unlikely]]
      abandon_overdue();
    if (!abandoned_.empty()) [[unlikely]] {
      // Abandoned pollables go once the kernel has completed their requests.
      std::erase_if(abandoned_, [](const std::unique_ptr<Pollable>& a) { return a->inflight() == 0; });
      abandoned_count_.store(abandoned_.size(), std::memory_order_relaxed);
    }
    unsigned work = 0;
    for (Pollable* p : pollables_) {
      work += p->poll(*this, opts_.burst);
      settle_faults(p);
    }
    if (io_uring_sq_ready(&ring_) > 0) io_uring_submit(&ring_);
    unsigned before = io_uring_cq_ready(&ring_);
    reap();
    work += before;
    end_burst();
    if (!detaching_.empty()) finish_detaches();
    polls_.store(polls_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // one writer
    if (busy_time) {
      const uint64_t loop_end = read_tsc();
      if (work > 0)
        busy_ticks_.store(busy_ticks_.load(std::memory_order_relaxed) + (loop_end - loop_start),
                          std::memory_order_relaxed);  // one writer
      loop_start = loop_end;
    }
    if (work > 0) {
      idle_polls = 0;
      continue;
    }
    if (idle_polls++ % kIdleCheck != 0) continue;
    uint64_t t = now_us();
    if (idle_polls == 1) idle_since = t;
    if (t - idle_since > opts_.poll_us || any_inflight()) {
      // Idle past the poll budget, or nothing to do but wait for the kernel:
      // sleep until a completion or a kick. Waiting in the kernel rather than
      // spinning leaves the CPU to io_uring's own workers (buffered I/O the
      // kernel cannot do inline runs there), which matters on small machines.
      sleep();
      reap();
      end_burst();
      idle_polls = 0;
      if (busy_time) loop_start = read_tsc();  // the next loop's time starts after the sleep
    }
  }
}

}  // namespace sluice
