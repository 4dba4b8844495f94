// sluice-blkbench: an in-process vhost-user front-end that drives any
// vhost-user-blk back-end (sluiced, qemu-storage-daemon, ...) over its unix
// socket with many requests in flight, and reports IOPS, bandwidth and
// latency. The same front-end for every back-end makes the comparison fair;
// a TCG guest would hide back-end differences behind its own CPU cost.
//
//   sluice-blkbench --socket PATH [--rw randread|randwrite|read|write|verify]
//                   [--bs 4096] [--qd 32] [--queues 1] [--seconds 5] [--irq]
//
// The driver busy-polls its used rings (like a polling guest driver) and
// kicks only when the back-end asks to be kicked (EVENT_IDX / NO_NOTIFY).
// --irq keeps interrupts enabled (used_event follows the driver) and reports
// how many the back-end signalled on the call eventfds. --rw verify writes a
// pattern naming each block to the first blocks of the disk (up to 64 MiB),
// reads them all back and counts every mismatch as an error.
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dataplane/blk/request.h"
#include "tests/support/mock_guest.h"
#include "tests/support/vhost_client.h"
#include "tests/support/vhost_frontend.h"
#include "vhost/channel.h"
#include "vhost/protocol.h"

using namespace sluice;
using namespace sluice::vhost;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "sluice-blkbench: %s\n", m.c_str());
  std::exit(1);
}

struct Queue {
  std::unique_ptr<test::MockDriver> drv;
  UniqueFd kick, call;
  struct Req {
    uint64_t hdr, data, status;
    std::byte* hdr_host;  // front-end view of the header and status (no lookups per request)
    std::byte* status_host;
    Clock::time_point t0;
    std::byte* data_host = nullptr;
    uint64_t sector = 0;
  };
  std::vector<Req> slots;  // by token
  std::vector<uint16_t> free;
};

double pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(i), v.end());
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  std::string sock, rw = "randread";
  uint32_t bs = 4096, qd = 32, nq = 1;
  double seconds = 5;
  bool irq = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--socket") sock = val();
    else if (a == "--rw") rw = val();
    else if (a == "--bs") bs = static_cast<uint32_t>(std::stoul(val()));
    else if (a == "--qd") qd = static_cast<uint32_t>(std::stoul(val()));
    else if (a == "--queues") nq = static_cast<uint32_t>(std::stoul(val()));
    else if (a == "--seconds") seconds = std::stod(val());
    else if (a == "--irq") irq = true;
    else die("unknown option " + a);
  }
  if (sock.empty()) die("--socket PATH is required");
  if (bs % 512 || bs == 0 || bs > (4u << 20)) die("--bs: a multiple of 512, at most 4 MiB");
  const bool verify = rw == "verify";
  bool write = rw == "randwrite" || rw == "write" || verify;
  bool random = rw == "randread" || rw == "randwrite";
  if (!write && !random && rw != "read") die("--rw: randread, randwrite, read, write or verify");
  uint32_t per_q = std::max(1u, qd / nq);

  uint64_t data_bytes = uint64_t{per_q} * nq * bs + (64u << 20);
  test::MockGuest guest({{0x100000, data_bytes}});
  test::VhostClient c("sluice-blkbench");
  c.connect_to(sock);
  uint64_t offered = c.call(Request::kGetFeatures).as<uint64_t>();
  uint64_t want = (1ull << virtq::kFVersion1) | (1ull << virtq::kFEventIdx) | (1ull << 12 /* MQ */) |
                  (1ull << kFProtocolFeatures);
  want &= offered;
  c.send(Request::kSetFeatures, &want, 8);
  if (offered >> kFProtocolFeatures & 1) {
    uint64_t p = c.call(Request::kGetProtocolFeatures).as<uint64_t>();
    c.set_protocol_features(p & ((1ull << kPfReplyAck) | (1ull << kPfMq) | (1ull << kPfConfig)));
    uint64_t pf = c.protocol_features();
    c.send(Request::kSetProtocolFeatures, &pf, 8);
  }
  c.send(Request::kSetOwner, nullptr, 0, {}, true);
  uint64_t capacity = 0;
  if (c.protocol_features() >> kPfConfig & 1) {
    struct {
      ConfigHeader h;
      uint8_t d[8];
    } q{{0, 8, 0}, {}};
    Message m = c.call(Request::kGetConfig, &q, sizeof q);
    std::memcpy(&capacity, m.payload.data() + sizeof(ConfigHeader), 8);
  }
  if (capacity == 0) die("the back-end reported no capacity (needs the CONFIG protocol feature)");
  auto table = test::Frontend::mem_table_of(guest);
  auto fds = table.raw();
  c.send(Request::kSetMemTable, table.payload.data(), table.payload.size(), fds, true);

  std::vector<Queue> qs(nq);
  const uint16_t qsize = 256;
  for (uint32_t i = 0; i < nq; ++i) {
    Queue& q = qs[i];
    q.drv = std::make_unique<test::MockDriver>(
        guest, test::QueueLayout{.size = qsize, .event_idx = (want >> virtq::kFEventIdx & 1) != 0,
                                 .indirect = false});
    auto cfg = q.drv->device_config();
    c.send_v(Request::kSetVringNum, VringState{i, qsize});
    c.send_v(Request::kSetVringBase, VringState{i, 0});
    VringAddr a{i, 0, test::Frontend::uva_of(guest, cfg.desc_addr), test::Frontend::uva_of(guest, cfg.used_addr),
                test::Frontend::uva_of(guest, cfg.avail_addr), 0};
    c.send_v(Request::kSetVringAddr, a);
    q.kick.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    q.call.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int k = q.kick.get(), cl = q.call.get();
    c.send_v(Request::kSetVringKick, uint64_t{i}, std::span(&k, 1));
    c.send_v(Request::kSetVringCall, uint64_t{i}, std::span(&cl, 1));
    if (want >> kFProtocolFeatures & 1) c.send_v(Request::kSetVringEnable, VringState{i, 1});
    for (uint32_t s = 0; s < per_q; ++s) {
      uint64_t hdr = guest.alloc(16, 64), data = guest.alloc(bs, 4096), st = guest.alloc(1, 64);
      guest.fill(data, bs, static_cast<uint8_t>(s));
      q.slots.push_back({hdr, data, st, guest.host(hdr), guest.host(st), {}, guest.host(data), 0});
      q.free.push_back(static_cast<uint16_t>(s));
    }
    q.drv->ring().set_interrupts(irq);  // without --irq we only poll
  }

  uint64_t span_sectors = std::min<uint64_t>(capacity, 1ull << 21) / (bs / 512) * (bs / 512);  // first GiB at most
  if (span_sectors < bs / 512) die("disk smaller than one block");
  std::mt19937_64 rng(42);
  uint64_t seq = 0;
  auto next_sector = [&]() -> uint64_t {
    uint64_t blocks = span_sectors / (bs / 512);
    uint64_t b = random ? rng() % blocks : (seq++ % blocks);
    return b * (bs / 512);
  };
  // verify: the first blocks (64 MiB at most), each written once, then read.
  const uint64_t verify_blocks = std::min<uint64_t>(span_sectors / (bs / 512), (64u << 20) / bs);
  uint64_t to_issue = verify ? verify_blocks : UINT64_MAX;
  auto pattern = [](std::byte* p, uint32_t len, uint64_t sector) {
    for (uint32_t i = 0; i < len; i += 8) {
      uint64_t v = (sector + i / 512) * 0x9e3779b97f4a7c15ull ^ (i % 512);
      std::memcpy(p + i, &v, 8);
    }
  };
  auto submit = [&](Queue& q) {
    bool any = false;
    while (!q.free.empty() && to_issue > 0) {
      uint16_t s = q.free.back();
      q.free.pop_back();
      Queue::Req& r = q.slots[s];
      --to_issue;
      r.sector = next_sector();
      if (write && verify) pattern(r.data_host, bs, r.sector);
      if (!write && verify) std::memset(r.data_host, 0, bs);
      blk::ReqHeader h{write ? blk::kTOut : blk::kTIn, 0, r.sector};
      std::memcpy(r.hdr_host, &h, sizeof h);
      virtq::DriverBuf b[3] = {{r.hdr, 16, false}, {r.data, bs, !write}, {r.status, 1, true}};
      if (!q.drv->ring().add(b, false, s).ok()) die("ring full");
      r.t0 = Clock::now();
      any = true;
    }
    if (any && q.drv->ring().publish()) {
      uint64_t one = 1;
      (void)!::write(q.kick.get(), &one, sizeof one);
    }
  };

  std::vector<double> lat_us;
  lat_us.reserve(1 << 22);
  uint64_t done = 0, errors = 0, mismatches = 0;
  std::vector<std::byte> expect(bs);  // verify: what a block must hold
  auto t_start = Clock::now();
  auto t_end = t_start + std::chrono::duration<double>(seconds);
  auto outstanding = [&] {
    size_t n = 0;
    for (auto& q : qs) n += q.slots.size() - q.free.size();
    return n;
  };
  // One phase: submit until time is up (or, verifying, every block issued),
  // then drain.
  auto run_phase = [&] {
    for (auto& q : qs) submit(q);
    while ((verify ? (to_issue > 0 || outstanding() > 0) : Clock::now() < t_end)) {
      if (verify && Clock::now() > t_start + std::chrono::seconds(120)) die("verify: the back-end stopped answering");
      for (auto& q : qs) {
        virtq::UsedBuf u{};
        bool got = false;
        for (;;) {
          auto g = q.drv->ring().get_used(u);
          if (!g.ok()) die("the back-end broke the ring: " + std::string(g.error().name()));
          if (!g.value()) break;
          Queue::Req& r = q.slots[u.token];
          if (*r.status_host != std::byte{0}) ++errors;
          if (verify && !write) {
            pattern(expect.data(), bs, r.sector);
            if (std::memcmp(expect.data(), r.data_host, bs) != 0) ++mismatches;
          }
          lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - r.t0).count());
          q.free.push_back(static_cast<uint16_t>(u.token));
          ++done;
          got = true;
        }
        if (got) {
          if (irq) q.drv->ring().set_interrupts(true);  // the next completion interrupts again
          submit(q);
        }
      }
    }
  };
  run_phase();
  if (verify) {
    // Read back what was written, sequentially from block 0.
    write = false;
    seq = 0;
    to_issue = verify_blocks;
    run_phase();
    errors += mismatches;
    std::printf("verify: %llu blocks of %u bytes written and read back, %llu mismatches\n",
                static_cast<unsigned long long>(verify_blocks), bs, static_cast<unsigned long long>(mismatches));
  }
  if (irq) {
    uint64_t signals = 0;
    for (auto& q : qs) {
      uint64_t v = 0;
      if (::read(q.call.get(), &v, sizeof v) == sizeof v) signals += v;
    }
    std::printf("call-signals %llu\n", static_cast<unsigned long long>(signals));
  }
  double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  double iops = static_cast<double>(done) / secs;
  double avg = 0;
  for (double x : lat_us) avg += x;
  if (!lat_us.empty()) avg /= static_cast<double>(lat_us.size());
  double mx = lat_us.empty() ? 0 : *std::max_element(lat_us.begin(), lat_us.end());
  std::printf("rw=%s bs=%u qd=%u queues=%u: %.0f IOPS, %.1f MB/s, latency us avg %.1f p50 %.1f "
              "p99 %.1f p99.9 %.1f max %.0f, errors %llu\n",
              rw.c_str(), bs, per_q * nq, nq, iops, iops * bs / 1e6, avg, pct(lat_us, 0.5),
              pct(lat_us, 0.99), pct(lat_us, 0.999), mx, static_cast<unsigned long long>(errors));
  return errors ? 1 : 0;
}
