// sluice-bench: device-side cost of the split virtqueue, plain vs in-order.
//
// Each benchmark pops and pushes `batch` buffers of `ndesc`-descriptor chains
// and publishes them with one flush, the way a poll-mode worker runs a burst.
// The driver side is kept out of the measurement: the ring is filled once
// (descriptor table laid out in ring order, which both modes accept) and each
// iteration the driver only moves avail->idx forward by `batch`.
//
// The suite runs several rounds, alternating plain and in-order cases inside
// each round, and ends with the median per-buffer cost of each pair and the
// in-order saving (machines here are shared and noisy; a median over
// alternating rounds is what we quote).
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "dataplane/base/tsc.h"
#include "dataplane/net/switch.h"
#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

namespace {

using namespace sluice;
using namespace sluice::virtq;

constexpr uint16_t kQueueSize = 256;

// A guest, a driver and a started device queue over it, plus a data area of
// kQueueSize 2 KiB buffers.
struct Bench {
  test::MockGuest guest;
  test::MockDriver drv;
  SplitQueue q;
  uint64_t data;
  explicit Bench(bool in_order)
      : drv(guest, test::QueueLayout{.size = kQueueSize, .indirect = false, .in_order = in_order}),
        data(guest.alloc(uint64_t{kQueueSize} * 2048, 64)) {}
  // Lays chains of ndesc descriptors at 0, ndesc, 2*ndesc, ... (ring order,
  // valid for both modes) and points every avail slot at the chain an
  // in-order device would derive for it.
  void lay_out_ring(uint16_t ndesc) {
    for (uint16_t i = 0; i < kQueueSize; ++i) {
      bool last = (i + 1) % ndesc == 0;
      Desc d{data + uint64_t{i} * 2048, 1500, static_cast<uint16_t>(last ? 0 : kDescFNext),
             static_cast<uint16_t>(last ? 0 : i + 1)};
      drv.poke_desc(i, d);
    }
    for (uint16_t s = 0; s < kQueueSize; ++s) drv.poke_avail_entry(s, head_of(s, ndesc));
  }
  static uint16_t head_of(uint16_t n, uint16_t ndesc) {
    return static_cast<uint16_t>((n * ndesc) % kQueueSize);
  }
  bool start() {
    if (!q.configure(drv.device_config()).ok() || !q.attach(guest.table()).ok()) return false;
    q.set_base(0);
    q.set_kick_notification(false);
    return true;
  }
};

void BM_PopPush(benchmark::State& state, bool in_order, uint16_t ndesc, uint16_t batch) {
  Bench b(in_order);
  test::MockDriver& drv = b.drv;
  SplitQueue& q = b.q;
  b.lay_out_ring(ndesc);
  if (!b.start()) {
    state.SkipWithError("queue setup failed");
    return;
  }
  Chain c;
  uint16_t avail = 0;
  for (auto _ : state) {
    avail = static_cast<uint16_t>(avail + batch);
    drv.poke_avail_idx(avail);
    for (uint16_t i = 0; i < batch; ++i) {
      auto r = q.pop(c);
      if (!r.ok() || !r.value()) {
        state.SkipWithError("pop failed");
        return;
      }
      q.push(c.head(), 0);
    }
    benchmark::DoNotOptimize(q.flush());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
  state.counters["used_elems_per_buf"] =
      static_cast<double>(q.stats().used_elems) / static_cast<double>(q.stats().pushed);
}

// Round trip on one core: the driver adds `batch` chains and publishes, the
// device pops, pushes and flushes, the driver reaps. Both sides' costs.
void BM_RoundTrip(benchmark::State& state, bool in_order, uint16_t ndesc, uint16_t batch) {
  Bench b(in_order);
  if (!b.start()) {
    state.SkipWithError("queue setup failed");
    return;
  }
  std::vector<DriverBuf> bufs(ndesc);
  uint64_t slot = 0;
  Chain c;
  UsedBuf u{};
  for (auto _ : state) {
    for (uint16_t i = 0; i < batch; ++i) {
      for (auto& buf : bufs) buf = DriverBuf{b.data + (slot++ % kQueueSize) * 2048, 1500, false};
      if (!b.drv.ring().add(bufs, false).ok()) {
        state.SkipWithError("driver add failed");
        return;
      }
    }
    b.drv.ring().publish();
    for (;;) {
      auto r = b.q.pop(c);
      if (!r.ok() || !r.value()) break;
      b.q.push(c.head(), 0);
    }
    b.q.flush();
    for (;;) {
      auto g = b.drv.ring().get_used(u);
      if (!g.ok()) {
        state.SkipWithError("driver saw a spec violation");
        return;
      }
      if (!g.value()) break;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
}

void pin_to_cpu(unsigned cpu) {
  if (std::thread::hardware_concurrency() <= cpu) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// Cross-core: a driver thread on the other CPU recycles buffers as fast as
// the device returns them, while this thread runs the device loop (pop up to
// `batch`, push, flush). The driver is kept lean so that the device is the
// bottleneck: descriptors stay where lay_out_ring() put them; per returned
// buffer the driver reads the used ring as a real driver must (every element
// for a plain queue, one element per batch in order, 2.7.9) and rewrites one
// avail ring entry, then publishes avail->idx. Ring cache lines now travel
// between cores as they do between a vCPU and a vhost worker; that traffic is
// what in-order removes (no avail ring reads, one used element per batch).
void BM_CrossCore(benchmark::State& state, bool in_order, uint16_t ndesc, uint16_t batch) {
  Bench b(in_order);
  b.lay_out_ring(ndesc);
  SplitQueue& q = b.q;
  if (!b.start()) {
    state.SkipWithError("queue setup failed");
    return;
  }
  const auto nchains = static_cast<uint16_t>(kQueueSize / ndesc);
  std::byte* avail = b.drv.ring().avail_area();
  std::byte* used = b.drv.ring().used_area();
  store_release<uint16_t>(avail + kAvailIdxOff, nchains);  // every chain available
  alignas(64) std::atomic<bool> stop{false};
  alignas(64) std::atomic<bool> driver_error{false};
  std::thread driver([&] {
    pin_to_cpu(1);
    uint16_t seen = 0;  // used index consumed; avail index is always seen + nchains
    constexpr uint16_t kMask = kQueueSize - 1;
    while (!stop.load(std::memory_order_relaxed)) {
      uint16_t u = load_acquire<uint16_t>(used + kUsedIdxOff);
      if (u == seen) continue;
      for (uint16_t pos = seen; pos != u;) {
        uint32_t id = load_relaxed<uint32_t>(used + used_entry_off(pos & kMask));
        uint16_t covered = 1;
        if (in_order)  // the element names the batch's last buffer
          covered = static_cast<uint16_t>(
              ((id - Bench::head_of(pos, ndesc)) & kMask) / ndesc + 1);
        if (id != Bench::head_of(static_cast<uint16_t>(pos + covered - 1), ndesc) ||
            static_cast<uint16_t>(u - pos) < covered) {
          driver_error = true;
          return;
        }
        pos = static_cast<uint16_t>(pos + covered);
      }
      for (uint16_t n = seen; n != u; ++n) {
        auto a = static_cast<uint16_t>(n + nchains);
        store_relaxed<uint16_t>(avail + avail_entry_off(a & kMask), Bench::head_of(a, ndesc));
      }
      store_release<uint16_t>(avail + kAvailIdxOff, static_cast<uint16_t>(u + nchains));
      seen = u;
    }
  });
  pin_to_cpu(0);
  Chain c;
  uint64_t total = 0, empty_polls = 0;
  // Device busy time: the time-stamp counter around every poll that found
  // work (pop, push, flush, and the ring-line misses they take), converted to
  // ns at the end against the wall clock. Empty polls (waiting for the
  // driver) are not the device's cost per buffer.
  uint64_t busy_ticks = 0;
  const uint64_t tsc0 = read_tsc();
  const auto wall0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const uint64_t t0 = read_tsc();
    uint16_t n = 0;
    for (; n < batch; ++n) {
      auto r = q.pop(c);
      if (!r.ok()) {
        state.SkipWithError("pop failed");
        break;
      }
      if (!r.value()) break;
      q.push(c.head(), 0);
    }
    if (n > 0) {
      benchmark::DoNotOptimize(q.flush());
      busy_ticks += read_tsc() - t0;
    }
    empty_polls += n == 0;
    total += n;
  }
  const double wall_ns = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                 std::chrono::steady_clock::now() - wall0)
                                                 .count());
  const double ns_per_tick = wall_ns / static_cast<double>(std::max<uint64_t>(1, read_tsc() - tsc0));
  stop = true;
  driver.join();
  pin_to_cpu(0);
  if (driver_error) state.SkipWithError("driver saw a spec violation");
  state.SetItemsProcessed(static_cast<int64_t>(total));
  // Where the time went: a device that mostly finds the ring empty is waiting
  // for the driver thread, not doing queue work.
  state.counters["bufs_per_flush"] =
      static_cast<double>(total) / static_cast<double>(std::max<uint64_t>(1, q.stats().flushes));
  state.counters["busy_ns_per_buf"] = static_cast<double>(busy_ticks) * ns_per_tick /
                                      static_cast<double>(std::max<uint64_t>(1, total));
  state.counters["empty_poll_frac"] =
      static_cast<double>(empty_polls) / static_cast<double>(std::max<uint64_t>(1, state.iterations()));
}

// The switch's per-frame decision (source check, learning, lookup or flood),
// without the rings: a 64-byte frame from port 0 to a learned port ("unicast")
// or broadcast to four ports ("flood"). The ports only count what they are
// handed. `locked`: every port locked to its own MAC (the vhost-user default).
struct CountPort final : net::SwitchPort {
  using net::SwitchPort::SwitchPort;
  uint64_t bytes = 0;
  void deliver(const net::Packet& p, uint16_t) override { bytes += p.len; }
  const char* kind() const override { return "bench"; }
};

void BM_Switch(benchmark::State& state, bool flood, bool locked) {
  Worker w{WorkerOptions{}};
  net::Switch sw{"bench", w};
  std::vector<std::unique_ptr<CountPort>> ports;
  for (int i = 0; i < 5; ++i) {
    ports.push_back(std::make_unique<CountPort>("p" + std::to_string(i)));
    if (locked) ports.back()->set_security(net::PortSecurity{0x525400000010ull + uint64_t(i), 64, 0});
    if (!sw.add_port(*ports.back()).ok()) {
      state.SkipWithError("add_port failed");
      return;
    }
  }
  uint8_t frame[64] = {};
  iovec iov{frame, sizeof frame};
  net::Packet p;
  p.iov = &iov;
  p.niov = 1;
  p.len = sizeof frame;
  const uint64_t dst = flood ? 0xffffffffffffull : 0x525400000011ull;
  for (int i = 0; i < 6; ++i) {
    p.eth[i] = static_cast<uint8_t>(dst >> (40 - 8 * i));
    p.eth[6 + i] = static_cast<uint8_t>(0x525400000010ull >> (40 - 8 * i));
  }
  // Port 1 makes itself known first (an unlocked port is found by learning).
  net::Packet hello = p;
  for (int i = 0; i < 6; ++i) {
    hello.eth[i] = 0xff;
    hello.eth[6 + i] = static_cast<uint8_t>(0x525400000011ull >> (40 - 8 * i));
  }
  uint64_t now = net::Switch::now_ns();
  sw.forward(*ports[1], hello, 0, now);
  for (auto _ : state) {
    now += 50;  // the worker reads the clock once per burst, not per frame
    sw.forward(*ports[0], p, 0, now);
  }
  state.SetItemsProcessed(state.iterations());
  benchmark::DoNotOptimize(ports[1]->bytes);
}

void register_all() {
  for (bool locked : {false, true}) {
    std::string l = locked ? "-locked" : "";
    benchmark::RegisterBenchmark(("switch/unicast" + l).c_str(), [=](benchmark::State& s) { BM_Switch(s, false, locked); });
    benchmark::RegisterBenchmark(("switch/flood" + l).c_str(), [=](benchmark::State& s) { BM_Switch(s, true, locked); });
  }
  for (uint16_t ndesc : {uint16_t{1}, uint16_t{2}, uint16_t{4}})
    for (uint16_t batch : {uint16_t{1}, uint16_t{8}, uint16_t{32}}) {
      std::string suffix = "/ndesc:" + std::to_string(ndesc) + "/batch:" + std::to_string(batch);
      benchmark::RegisterBenchmark(("plain" + suffix).c_str(), [=](benchmark::State& s) {
        BM_PopPush(s, false, ndesc, batch);
      });
      benchmark::RegisterBenchmark(("inorder" + suffix).c_str(), [=](benchmark::State& s) {
        BM_PopPush(s, true, ndesc, batch);
      });
    }
  for (uint16_t ndesc : {uint16_t{1}, uint16_t{2}, uint16_t{4}})
    for (uint16_t batch : {uint16_t{1}, uint16_t{8}, uint16_t{32}}) {
      std::string suffix = "/ndesc:" + std::to_string(ndesc) + "/batch:" + std::to_string(batch);
      benchmark::RegisterBenchmark(("rt-plain" + suffix).c_str(), [=](benchmark::State& s) {
        BM_RoundTrip(s, false, ndesc, batch);
      });
      benchmark::RegisterBenchmark(("rt-inorder" + suffix).c_str(), [=](benchmark::State& s) {
        BM_RoundTrip(s, true, ndesc, batch);
      });
    }
  if (std::thread::hardware_concurrency() < 2) return;
  for (uint16_t ndesc : {uint16_t{1}, uint16_t{2}, uint16_t{4}})
    for (uint16_t batch : {uint16_t{1}, uint16_t{8}, uint16_t{32}}) {
      std::string suffix = "/ndesc:" + std::to_string(ndesc) + "/batch:" + std::to_string(batch);
      benchmark::RegisterBenchmark(("xcore-plain" + suffix).c_str(), [=](benchmark::State& s) {
        BM_CrossCore(s, false, ndesc, batch);
      })->UseRealTime();
      benchmark::RegisterBenchmark(("xcore-inorder" + suffix).c_str(), [=](benchmark::State& s) {
        BM_CrossCore(s, true, ndesc, batch);
      })->UseRealTime();
    }
}

// Collects ns per buffer for every run of every round, then prints medians.
class Collector : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, std::vector<double>> ns_per_buf;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      auto it = r.counters.find("items_per_second");
      std::string name = r.benchmark_name();
      if (auto at = name.find("/real_time"); at != std::string::npos) name.erase(at);
      if (it != r.counters.end() && it->second.value > 0)
        ns_per_buf[name].push_back(1e9 / it->second.value);
      // Cross core also reports the device's busy time per buffer; file it
      // under its own view ("busy-").
      if (auto b = r.counters.find("busy_ns_per_buf"); b != r.counters.end() && b->second.value > 0)
        ns_per_buf["busy-" + name.substr(name.find('-') + 1)].push_back(b->second.value);
    }
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0) {
      rounds = std::max(1, std::atoi(argv[i] + 9));
      continue;
    }
    args.push_back(argv[i]);
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  register_all();
  Collector rep;
  for (int r = 0; r < rounds; ++r) {
    std::printf("== round %d of %d ==\n", r + 1, rounds);
    benchmark::RunSpecifiedBenchmarks(&rep);
  }
  std::printf("\nSwitch decision per frame (no rings). Median over %d rounds, ns per frame:\n", rounds);
  for (const char* c : {"switch/unicast", "switch/unicast-locked", "switch/flood", "switch/flood-locked"})
    if (auto it = rep.ns_per_buf.find(c); it != rep.ns_per_buf.end())
      std::printf("%-22s %10.2f\n", c, median(it->second));
  for (const char* mode : {"", "rt-", "xcore-", "busy-"}) {
  if (std::string(mode) == "rt-")
    std::printf("\nRound trip on one core (driver add + publish, device pop + push + flush,\n"
                "driver reap). Median over %d alternating rounds, ns per buffer:\n", rounds);
  else if (*mode == 0)
    std::printf("\nSame core (rings hot in L1). Median over %d alternating rounds, device side,\n"
                "ns per buffer (pop + push + share of one flush):\n", rounds);
  else if (std::string(mode) == "xcore-")
    std::printf("\nCross core (driver thread on the other CPU). Median over %d alternating rounds,\n"
                "wall-clock ns per buffer through the device loop (the pair's rate):\n", rounds);
  else
    std::printf("\nCross core, device busy time (polls that found work: pop + push + flush and\n"
                "the ring-line misses they take). Median over %d alternating rounds, ns per buffer:\n",
                rounds);
  std::printf("%-22s %10s %10s %12s\n", "chain/batch", "plain", "in-order", "in-order saves");
  for (int64_t ndesc : {1, 2, 4})
    for (int64_t batch : {1, 8, 32}) {
      std::string suffix = "/ndesc:" + std::to_string(ndesc) + "/batch:" + std::to_string(batch);
      auto p = rep.ns_per_buf.find(std::string(mode) + "plain" + suffix);
      auto o = rep.ns_per_buf.find(std::string(mode) + "inorder" + suffix);
      if (p == rep.ns_per_buf.end() || o == rep.ns_per_buf.end()) continue;
      // The ratio's median over rounds, each round pairing its own A and B.
      std::vector<double> ratios;
      for (size_t i = 0; i < std::min(p->second.size(), o->second.size()); ++i)
        ratios.push_back(o->second[i] / p->second[i]);
      std::printf("%-22s %10.2f %10.2f %11.1f%%\n", suffix.c_str() + 1, median(p->second),
                  median(o->second), 100.0 * (1.0 - median(ratios)));
    }
  }
  benchmark::Shutdown();
  return 0;
}
