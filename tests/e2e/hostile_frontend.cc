// sluice-hostile: a vhost-user-blk front-end that misbehaves on purpose, one
// named case per run, against a running back-end. It sets up a ring as any
// front-end does, then does what a hostile (or broken) VMM could:
//
//   shrink-memory       cuts its guest memory file (rings included) to 0
//                       after the back-end mapped it
//   shrink-buffers      cuts only the region holding the request buffers:
//                       every request must fail with IOERR, the ring live
//   guest-memfd-private buffers in a guest_memfd whose pages are private
//                       (Linux 6.18 GUEST_MEMFD_FLAG_MMAP without INIT_SHARED)
//   saturate-call       saturates its call eventfd's counter before the
//                       back-end signals it (a blocking write would hang)
//   shrink-inflight     hands over its own inflight region, then cuts it
//   inflight-while-running  asks for a new inflight region under a running
//                       ring (must be refused)
//   huge-memory         a memory table of 2 TiB (sparse): past the export's
//                       bound, refused
//   hwpoison            poisons the page of its first request's buffer with
//                       madvise(MADV_HWPOISON) (a hardware memory error, as
//                       the kernel reports one: SIGBUS BUS_MCEERR_AR). Run it
//                       only in a test guest (tests/e2e/hwpoison_guest.sh):
//                       the page is taken out of service for good
//
// It reports what it saw of the back-end (request statuses) and keeps the
// connection open for --hold seconds, so that a test can look at the
// back-end meanwhile. Exit 0: the back-end answered as a contained failure
// should look from the front-end's side; 1: it did not; 77: the case cannot
// run here (no guest_memfd, no MADV_HWPOISON).
//
//   sluice-hostile --socket PATH --case NAME [--hold SECONDS]
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/blk/request.h"
#include "tests/support/mock_guest.h"
#include "tests/support/vhost_client.h"
#include "tests/support/vhost_frontend.h"

using namespace sluice;
using namespace sluice::vhost;

namespace {

constexpr uint64_t kRegion0 = 0x100000, kRegion1 = 0x8000000;
constexpr uint32_t kRequests = 8;

// guest_memfd (KVM_CREATE_GUEST_MEMFD, GUEST_MEMFD_FLAG_MMAP = 1): private
// pages only. Invalid fd when the kernel cannot.
UniqueFd private_guest_memfd(uint64_t size, UniqueFd& kvm, UniqueFd& vm) {
  struct Create {
    uint64_t size, flags, reserved[6];
  } c{size, 1, {}};
  kvm.reset(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm.valid()) return {};
  vm.reset(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm.valid()) return {};
  return UniqueFd(::ioctl(vm.get(), _IOWR(KVMIO, 0xd4, Create), &c));
}

}  // namespace

int main(int argc, char** argv) {
  std::string sock, name;
  double hold = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--socket") sock = argv[i + 1];
    else if (a == "--case") name = argv[i + 1];
    else if (a == "--hold") hold = std::stod(argv[i + 1]);
  }
  test::VhostClient c("sluice-hostile");
  if (sock.empty() || name.empty()) c.die("usage: sluice-hostile --socket PATH --case NAME [--hold S]");
  auto report = [&](bool ok, const std::string& what) {
    std::printf("hostile %s: %s\n", name.c_str(), what.c_str());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::duration<double>(hold));
    return ok ? 0 : 1;
  };

  // Region 0: rings and headers/statuses; region 1: data buffers.
  test::MockGuest guest({{kRegion0, 8u << 20}, {kRegion1, 1u << 20}});
  UniqueFd kvm, vm, gmem;
  if (name == "guest-memfd-private") {
    gmem = private_guest_memfd(1u << 20, kvm, vm);
    if (!gmem.valid()) {
      std::printf("hostile %s: skipped: no guest_memfd with mmap (Linux 6.18)\n", name.c_str());
      return 77;
    }
  }
  c.connect_to(sock);
  uint64_t offered = c.call(Request::kGetFeatures).as<uint64_t>();
  uint64_t want = offered & ((1ull << virtq::kFVersion1) | (1ull << kFProtocolFeatures));
  c.send(Request::kSetFeatures, &want, 8);
  uint64_t pf = c.call(Request::kGetProtocolFeatures).as<uint64_t>() &
                ((1ull << kPfReplyAck) | (1ull << kPfInflightShmfd) | (1ull << kPfConfig) |
                 (1ull << kPfConfigureMemSlots));
  c.set_protocol_features(pf);
  c.send(Request::kSetProtocolFeatures, &pf, 8);
  c.send(Request::kSetOwner, nullptr, 0, {}, true);

  if (name == "huge-memory") {
    // 2 TiB of sparse memfd: address space only, but twice the default
    // bound of an export. Refused (REPLY_ACK says so); the session lives.
    UniqueFd big = test::make_memfd(2ull << 40);
    struct {
      MemTableHeader h;
      MemRegion r;
    } t{{1, 0}, {0, 2ull << 40, 0x10000000000ull, 0}};
    int bfd = big.get();
    uint64_t ack = c.try_send(Request::kSetMemTable, &t, sizeof t, std::span(&bfd, 1), true);
    uint64_t slots = 0;
    if (pf >> kPfConfigureMemSlots & 1) slots = c.call(Request::kGetMaxMemSlots).as<uint64_t>();
    return report(ack != 0, std::string(ack != 0 ? "refused" : "accepted") + " a 2 TiB memory table" +
                                (slots ? "; max slots " + std::to_string(slots) : ""));
  }
  auto table = test::Frontend::mem_table_of(guest);
  if (gmem.valid()) {
    // Region 1's fd becomes the guest_memfd (same size and coordinates).
    table.fds[1] = std::move(gmem);
  }
  auto fds = table.raw();
  c.send(Request::kSetMemTable, table.payload.data(), table.payload.size(), fds, true);

  // An inflight region of our own (shrink-inflight): a plain memfd we can cut.
  UniqueFd inflight;
  const uint16_t qsize = 64;
  if (name == "shrink-inflight") {
    Inflight in{0, 0, 1, qsize, 0};
    Message m = c.call(Request::kGetInflightFd, &in, sizeof in);
    auto got = m.as<Inflight>();
    if (m.fds.empty()) c.die("no inflight fd");
    // Sluice's own is sealed: cutting it must fail.
    if (::ftruncate(m.fds[0].get(), 0) == 0) return report(false, "the back-end's inflight memfd could be cut");
    inflight = test::make_memfd(got.mmap_size);
    int ifd = inflight.get();
    c.send_v(Request::kSetInflightFd, got, std::span(&ifd, 1));
  }

  test::MockDriver drv(guest, test::QueueLayout{.size = qsize, .indirect = false});
  auto cfg = drv.device_config();
  c.send_v(Request::kSetVringNum, VringState{0, qsize});
  c.send_v(Request::kSetVringBase, VringState{0, 0});
  VringAddr a{0, 0, test::Frontend::uva_of(guest, cfg.desc_addr), test::Frontend::uva_of(guest, cfg.used_addr),
              test::Frontend::uva_of(guest, cfg.avail_addr), 0};
  c.send_v(Request::kSetVringAddr, a);
  UniqueFd kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  UniqueFd call(::eventfd(0, EFD_CLOEXEC));  // blocking, as a careless VMM's might be
  int k = kick.get(), cl = call.get();
  c.send_v(Request::kSetVringKick, uint64_t{0}, std::span(&k, 1));
  c.send_v(Request::kSetVringCall, uint64_t{0}, std::span(&cl, 1));
  c.send_v(Request::kSetVringEnable, VringState{0, 1});

  if (name == "inflight-while-running") {
    Inflight in{0, 0, 1, qsize, 0};
    c.send(Request::kGetInflightFd, &in, sizeof in);
    Message m;
    bool refused = !recv_message(c.fd(), m).ok();  // a refusal of a GET closes the session
    return report(refused, refused ? "refused (session closed)" : "a new region was handed out under a running ring");
  }

  // Requests: reads of 4 KiB, header and status in region 0, data in
  // region 1 (the page the cases cut or make private).
  std::vector<uint64_t> status(kRequests);
  for (uint32_t i = 0; i < kRequests; ++i) {
    uint64_t h = guest.alloc(16), st = guest.alloc(1);
    blk::ReqHeader hdr{blk::kTIn, 0, uint64_t{i} * 8};
    guest.write(h, std::as_bytes(std::span(&hdr, 1)));
    guest.fill(st, 1, 0xff);
    status[i] = st;
    uint64_t data = kRegion1 + uint64_t{i} * 4096;
    virtq::DriverBuf b[3] = {{h, 16, false}, {data, 4096, true}, {st, 1, true}};
    if (!drv.ring().add(b, false, i).ok()) c.die("ring full");
  }
  auto kick_it = [&] {
    uint64_t one = 1;
    (void)!::write(kick.get(), &one, sizeof one);
  };
  auto cut = [&](size_t region) {
    if (::ftruncate(guest.table()->regions()[region].backing->fd.get(), 0) != 0) c.die("ftruncate");
  };
  // Collects completions for up to 2 s (the front-end only reads region 0).
  auto collect = [&] {
    uint32_t n = 0;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    virtq::UsedBuf u{};
    while (n < kRequests && std::chrono::steady_clock::now() < end) {
      auto g = drv.ring().get_used(u);
      if (!g.ok()) c.die("the back-end broke the used ring");
      if (g.value()) ++n;
      else std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return n;
  };
  auto count_status = [&](uint8_t want_status) {
    uint32_t n = 0;
    for (uint64_t st : status) n += static_cast<uint8_t>(*guest.host(st)) == want_status;
    return n;
  };

  if (name == "shrink-memory") {
    drv.ring().publish();
    cut(0);
    cut(1);
    kick_it();
    // We cannot look at our own rings any more; the test asks the back-end.
    return report(true, "memory cut under the back-end; nothing more to see from here");
  }
  if (name == "shrink-buffers" || name == "guest-memfd-private") {
    if (name == "shrink-buffers") cut(1);
    drv.ring().publish();
    kick_it();
    uint32_t done = collect(), ioerr = count_status(blk::kSIoErr);
    return report(done == kRequests && ioerr == kRequests,
                  std::to_string(done) + " of " + std::to_string(kRequests) + " answered, " +
                      std::to_string(ioerr) + " with IOERR");
  }
  if (name == "hwpoison") {
    // Request 0's buffer page fails as faulty RAM would. We never touch it
    // again; the back-end must fail request 0, serve the others, and report
    // the page.
    if (::madvise(guest.host(kRegion1), 4096, MADV_HWPOISON) != 0) {
      std::printf("hostile %s: skipped: madvise(MADV_HWPOISON): %s (needs CONFIG_MEMORY_FAILURE and "
                  "CAP_SYS_ADMIN)\n",
                  name.c_str(), std::strerror(errno));
      return 77;
    }
    drv.ring().publish();
    kick_it();
    uint32_t done = collect(), ioerr = count_status(blk::kSIoErr), ok = count_status(blk::kSOk);
    bool first_failed = static_cast<uint8_t>(*guest.host(status[0])) == blk::kSIoErr;
    return report(done == kRequests && first_failed && ok == kRequests - 1,
                  std::to_string(done) + " of " + std::to_string(kRequests) + " answered, " + std::to_string(ioerr) +
                      " with IOERR (the poisoned page's: " + (first_failed ? "yes" : "no") + "), " +
                      std::to_string(ok) + " OK");
  }
  if (name == "saturate-call") {
    uint64_t max = 0xfffffffffffffffeull;
    if (::write(call.get(), &max, sizeof max) != 8) c.die("cannot saturate the call eventfd");
    drv.ring().publish();
    kick_it();
    uint32_t done = collect();
    return report(done == kRequests, std::to_string(done) + " of " + std::to_string(kRequests) +
                                         " answered with the call counter saturated");
  }
  if (name == "shrink-inflight") {
    if (::ftruncate(inflight.get(), 0) != 0) c.die("ftruncate inflight");
    drv.ring().publish();
    kick_it();
    uint32_t done = collect();
    return report(done == 0, std::to_string(done) + " answered after the inflight region was cut");
  }
  c.die("unknown case " + name);
}
