// A poll-mode worker: one thread, one io_uring, the queues it owns.
//
// The worker polls its queues in bursts (each pops, parses and submits up to
// a budget), submits once, reaps completions, then ends the burst: every
// queue publishes its used entries with one store and each call fd that needs
// it is written once, however many queues share it. When nothing happened for
// longer than the poll budget it arms kick notifications, re-checks, and
// sleeps in io_uring on the queues' kick eventfds (and its command eventfd).
//
// The control thread changes the set of queues only through attach()/detach(),
// which block until the worker has acknowledged: detach returns once the queue
// has no request in flight and its completions are published (the quiesce
// handshake). Nothing on the per-request path takes a lock.
#pragma once

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "dataplane/memory/guest_fault.h"

namespace sluice {

class Worker;
class Pollable;

// Embedded in every operation a pollable puts on the worker's ring; the
// completion's user_data points at it.
struct IoOp {
  Pollable* owner = nullptr;
  uint32_t tag = 0;  // owner-defined (e.g. the segment of a multi-op request)
};

class Pollable {
 public:
  virtual ~Pollable() = default;
  // Takes up to `budget` new requests; returns how many.
  virtual unsigned poll(Worker& w, unsigned budget) = 0;
  // An operation this pollable submitted has completed with `res`.
  virtual void complete(Worker& w, IoOp* op, int res) = 0;
  // End of a burst: publish completions, ask for interrupts via w.signal().
  virtual void end_of_burst(Worker& w) = 0;
  // Optional, instead of end_of_burst: the worker calls publish_used() on
  // every pollable that has it, issues one full fence for all of them, then
  // signal_needed() on those that published (each decides on interrupts).
  // A queue's own fence per burst otherwise waits for all the stores the
  // burst made into guest memory, once per queue. Default: not two-phase.
  virtual bool two_phase() const { return false; }
  virtual bool publish_used() { return false; }
  virtual void signal_needed(Worker&) {}
  // The eventfd that announces new work, or -1.
  virtual int kick_fd() const = 0;
  // Before sleeping: ask the driver for kicks; false if work is already there.
  virtual bool arm() = 0;
  // After waking: back to polling without kicks.
  virtual void disarm() = 0;
  // Stop taking new requests (detach is pending); in-flight ones continue.
  virtual void quiesce() = 0;
  // A call into this pollable left guest memory faults pending on the
  // worker's thread (dataplane/memory/guest_fault.h) that it did not take
  // itself: they are its own (a ring, a status byte, an inflight region).
  // Take them (fault::take) and act: break the queue, fail the request.
  // Whatever is still pending afterwards is dropped with a log line.
  virtual void on_guest_fault() {}
  virtual unsigned inflight() const = 0;
  // Worker thread, once: its requests did not complete within the stop
  // deadline (Worker::retire) and its ring and device are going away. From
  // now on only complete() and inflight() are called; complete() must touch
  // nothing but the pollable itself and what it keeps alive (the guest
  // memory the kernel may still write: keep a reference to it here).
  virtual void abandon() {}
};

struct WorkerOptions {
  std::string name = "worker";
  int cpu = -1;                 // pin to this CPU when >= 0
  unsigned ring_entries = 256;
  unsigned burst = 32;          // requests per queue per burst
  unsigned poll_us = 50;        // busy-poll this long after the last work before sleeping
  bool busy_time = false;       // keep busy_ns(): one time-stamp read per loop (a few % at full load)
  // How long retire() waits for a pollable's requests (a hung file or
  // device) before abandoning them.
  std::chrono::milliseconds stop_timeout{5000};
};

class Worker {
 public:
  explicit Worker(WorkerOptions opts);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  Status start();
  void stop();

  // Control thread. Return once the worker has taken / let go of p.
  void attach(Pollable* p);
  void detach(Pollable* p);  // for pollables whose requests always complete (inflight() bounded by a burst)
  // Detaches p and destroys it. true: its requests completed within
  // stop_timeout. false: they did not; p was abandoned (Pollable::abandon)
  // and the worker destroys it once they complete, or leaves it to the
  // kernel at stop(). Either way nothing of p's ring or device is touched
  // after this returns.
  bool retire(std::unique_ptr<Pollable> p);
  // Pollables abandoned and not yet destroyed (their requests still out).
  size_t abandoned() const noexcept { return abandoned_count_.load(std::memory_order_relaxed); }
  // Returns after the worker has finished the burst it was in: state the
  // control thread changed before calling is seen by every later burst, and
  // nothing read before it (an old call fd) is used any more.
  void sync();

  // Worker thread only.
  io_uring_sqe* get_sqe();
  void signal(int call_fd);

  const std::string& name() const noexcept { return opts_.name; }
  uint64_t sleeps() const noexcept { return sleeps_.load(std::memory_order_relaxed); }
  uint64_t polls() const noexcept { return polls_.load(std::memory_order_relaxed); }
  // Nanoseconds spent asleep in the kernel (waiting for kicks or I/O), and
  // since start; the rest is polling and request work.
  uint64_t sleep_ns() const noexcept { return sleep_ns_.load(std::memory_order_relaxed); }
  uint64_t uptime_ns() const noexcept;
  // Nanoseconds spent in poll loops that found work (frames, requests,
  // completions): the back-end's own cost, apart from polls that found
  // nothing. Measured with the time-stamp counter, one read per loop, only
  // with WorkerOptions::busy_time (0 otherwise).
  uint64_t busy_ns() const noexcept;
  bool busy_time() const noexcept { return opts_.busy_time; }

 private:
  struct KickPoll {
    IoOp op;  // owner == nullptr: a worker-owned poll
    Pollable* target = nullptr;
    int fd = -1;
    bool armed = false;
  };
  struct Cmd {
    bool attach;
    Pollable* p;
    bool done = false;
    bool abandon = false;    // retire(): the deadline passed, the worker is to abandon p
    bool abandoned = false;  // ... and it did (p moved to abandoned_)
    std::unique_ptr<Pollable> owned;  // retire(): p, for the worker to keep when abandoned
  };

  void run();
  // After a call into p: hands faults the call left pending to p (rare; one
  // thread-local load otherwise).
  static void settle_faults(Pollable* p) {
    if (fault::pending()) [[unlikely]]
      hand_faults(p);
  }
  static void hand_faults(Pollable* p);
  void post(Cmd& c);  // control thread: queue a command, wait for its acknowledgement
  void enqueue(Cmd& c);  // the same, without waiting (cmd_mu_ held by the caller)
  void abandon_overdue();  // worker: detaches whose retire() gave up
  void forget(Pollable* p);  // worker: p leaves pollables_ and its kick poll is orphaned
  void handle_commands();
  void reap();
  void end_burst();
  void sleep();
  void finish_detaches();
  bool any_inflight() const;

  WorkerOptions opts_;
  io_uring ring_{};
  bool ring_ok_ = false;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::vector<Pollable*> pollables_;
  std::vector<Pollable*> detaching_;
  std::vector<std::unique_ptr<KickPoll>> kicks_;  // one per pollable with a kick fd
  // Kick polls of detached pollables still armed in the ring: freed when
  // their completion arrives, or with the worker.
  std::vector<std::unique_ptr<KickPoll>> orphans_;
  std::vector<int> to_signal_;

  std::mutex cmd_mu_;
  std::condition_variable cmd_cv_;
  std::vector<Cmd*> cmds_;
  std::atomic<bool> cmd_pending_{false};
  UniqueFd cmd_efd_;
  KickPoll cmd_poll_;
  std::vector<Cmd*> pending_detach_cmds_;
  std::atomic<bool> abandon_pending_{false};
  std::vector<std::unique_ptr<Pollable>> abandoned_;  // worker: destroyed when inflight() is 0
  std::atomic<size_t> abandoned_count_{0};

  std::atomic<uint64_t> sleeps_{0}, polls_{0}, sleep_ns_{0};
  std::atomic<int64_t> started_ns_{0};
  // Time-stamp counter at start and summed over busy loops (see busy_ns()).
  std::atomic<uint64_t> tsc0_{0}, busy_ticks_{0};
};

}  // namespace sluice
