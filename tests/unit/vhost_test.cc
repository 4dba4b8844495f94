// The vhost-user back-end session against the in-process front-end: every
// message we implement, and malformed variants of each kind.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "tests/support/mock_guest.h"
#include "tests/support/vhost_frontend.h"
#include "dataplane/virtq/inflight.h"
#include "vhost/session.h"

namespace sluice::vhost {
namespace {

using test::Frontend;
using test::MockDriver;
using test::MockGuest;
using test::QueueLayout;

constexpr uint64_t kDevFeatures = (1ull << virtq::kFVersion1) | (1ull << virtq::kFEventIdx) |
                                  (1ull << virtq::kFIndirectDesc) | (1ull << virtq::kFInOrder);
constexpr uint64_t kPf = kOfferedProtocolFeatures;

struct TestDevice : VirtioDevice {
  std::vector<uint8_t> cfg = std::vector<uint8_t>(24, 0);
  std::map<uint16_t, QueueBinding> running;
  std::vector<std::pair<uint16_t, int>> call_changes;
  std::vector<std::pair<uint32_t, std::vector<uint8_t>>> config_writes;
  int resets = 0;
  uint64_t driver_features = 0;
  TestDevice() {
    for (size_t i = 0; i < cfg.size(); ++i) cfg[i] = static_cast<uint8_t>(i + 1);
  }
  uint32_t device_id() const override { return 2; }
  uint64_t device_features() const override { return kDevFeatures; }
  uint16_t max_queues() const override { return 2; }
  std::span<const uint8_t> config() const override { return cfg; }
  Status write_config(uint32_t off, std::span<const uint8_t> d) override {
    config_writes.emplace_back(off, std::vector<uint8_t>(d.begin(), d.end()));
    return {};
  }
  void set_driver_features(uint64_t f) override { driver_features = f; }
  Status queue_started(const QueueBinding& b) override {
    running[b.index] = b;
    return {};
  }
  void queue_stopped(uint16_t i) override { running.erase(i); }
  void call_fd_changed(uint16_t i, int fd) override { call_changes.emplace_back(i, fd); }
  void reset() override { ++resets; }
  // Completes everything available on queue i; returns how many.
  int serve(uint16_t i) {
    auto it = running.find(i);
    if (it == running.end()) return -1;
    virtq::Chain c;
    int n = 0;
    for (;;) {
      auto r = it->second.queue->pop(c);
      if (!r.ok() || !r.value()) break;
      it->second.queue->push(c.head(), static_cast<uint32_t>(c.writable_bytes()));
      ++n;
    }
    it->second.queue->flush();
    return n;
  }
};

struct Rig {
  MockGuest guest{{{0x100000, 16u << 20}, {0x2000000, 4u << 20}}};
  TestDevice dev;
  Session session{dev, "test"};
  Frontend fe;

  Response pump() {
    Message m;
    Status s = recv_message(fe.back_fd(), m);
    EXPECT_TRUE(s.ok()) << s.error().name();
    Response r = session.handle(m);
    if (r.send) {
      EXPECT_TRUE(send_message(fe.back_fd(), r.hdr, r.payload, r.fds).ok());
    }
    return r;
  }
  Message reply() {
    Message m;
    Status s = fe.recv(m);
    EXPECT_TRUE(s.ok()) << s.error().name();
    EXPECT_EQ(m.hdr.flags, kVersion | kFlagReply);
    return m;
  }
  uint64_t get_u64(Request r) {
    EXPECT_TRUE(fe.send_empty(r).ok());
    EXPECT_FALSE(pump().close);
    return reply().as<uint64_t>();
  }
  // Sends a message with need_reply set and returns the ack value.
  template <class T>
  uint64_t acked(Request r, const T& v, std::span<const int> fds = {}) {
    EXPECT_TRUE(fe.send_struct(r, v, fds, kVersion | kFlagNeedReply).ok());
    pump();
    Message m = reply();
    EXPECT_EQ(m.hdr.request, static_cast<uint32_t>(r));
    return m.as<uint64_t>();
  }
  Response set(Request r, uint64_t v) {
    EXPECT_TRUE(fe.send_struct(r, v).ok());
    return pump();
  }
  void negotiate(uint64_t features = kDevFeatures, uint64_t pf = kPf) {
    EXPECT_EQ(get_u64(Request::kGetFeatures), kDevFeatures | (1ull << kFProtocolFeatures));
    EXPECT_FALSE(set(Request::kSetFeatures, features | (1ull << kFProtocolFeatures)).close);
    EXPECT_EQ(get_u64(Request::kGetProtocolFeatures), kPf);
    EXPECT_FALSE(set(Request::kSetProtocolFeatures, pf).close);
    EXPECT_TRUE(fe.send_empty(Request::kSetOwner).ok());
    EXPECT_FALSE(pump().close);
  }
  uint64_t send_mem_table() {
    auto t = Frontend::mem_table_of(guest);
    auto fds = t.raw();
    EXPECT_TRUE(fe.send(static_cast<uint32_t>(Request::kSetMemTable), t.payload, fds,
                        kVersion | kFlagNeedReply).ok());
    pump();
    return reply().as<uint64_t>();
  }
  test::Frontend::Table table() { return Frontend::mem_table_of(guest); }
  // GET_INFLIGHT_FD for nq queues of qsize entries: the reply (and its fd).
  Message get_inflight(uint16_t nq, uint16_t qsize) {
    EXPECT_TRUE(fe.send_struct(Request::kGetInflightFd, Inflight{0, 0, nq, qsize, 0}).ok());
    pump();
    return reply();
  }
  // NUM, BASE, ADDR, KICK, CALL, ENABLE for ring i over driver d; all acked.
  void start_ring(uint32_t i, MockDriver& d, uint16_t base = 0) {
    auto c = d.device_config();
    EXPECT_EQ(acked(Request::kSetVringNum, VringState{i, c.size}), 0u);
    EXPECT_EQ(acked(Request::kSetVringBase, VringState{i, base}), 0u);
    VringAddr a{i, 0, Frontend::uva_of(guest, c.desc_addr), Frontend::uva_of(guest, c.used_addr),
                Frontend::uva_of(guest, c.avail_addr), 0};
    EXPECT_EQ(acked(Request::kSetVringAddr, a), 0u);
    kick = test::make_eventfd();
    call = test::make_eventfd();
    int k = kick.get(), cl = call.get();
    EXPECT_EQ(acked(Request::kSetVringKick, uint64_t{i}, std::span(&k, 1)), 0u);
    EXPECT_EQ(acked(Request::kSetVringCall, uint64_t{i}, std::span(&cl, 1)), 0u);
    EXPECT_EQ(acked(Request::kSetVringEnable, VringState{i, 1}), 0u);
  }
  UniqueFd kick, call;
};

const uint32_t kWr[] = {512};

TEST(VhostSession, FullNegotiationServesARing) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.dev.driver_features, kDevFeatures);
  EXPECT_EQ(r.get_u64(Request::kGetQueueNum), 2u);
  EXPECT_EQ(r.send_mem_table(), 0u);
  EXPECT_EQ(r.session.memory().snapshot()->regions().size(), 2u);
  MockDriver d(r.guest, QueueLayout{.size = 64, .event_idx = true, .in_order = true});
  r.start_ring(0, d);
  ASSERT_TRUE(r.session.queue_running(0));
  ASSERT_EQ(r.dev.running.count(0), 1u);
  EXPECT_TRUE(r.dev.running[0].queue->in_order());
  for (int i = 0; i < 5; ++i) d.add_chain({}, kWr);
  d.ring().publish();
  EXPECT_EQ(r.dev.serve(0), 5);
  virtq::UsedBuf u{};
  int got = 0;
  while (d.ring().get_used(u).value()) {
    EXPECT_EQ(u.len, 512u);  // per-buffer lengths: the default batching
    ++got;
  }
  EXPECT_EQ(got, 5);
  // GET_VRING_BASE stops the ring and returns where the driver is.
  ASSERT_TRUE(r.fe.send_struct(Request::kGetVringBase, VringState{0, 0}).ok());
  r.pump();
  EXPECT_EQ(r.reply().as<VringState>().num, 5u);
  EXPECT_FALSE(r.session.queue_running(0));
  EXPECT_EQ(r.dev.running.count(0), 0u);
}

TEST(VhostSession, BaseIsRespectedAndRestartResumes) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  r.start_ring(0, d);
  for (int i = 0; i < 3; ++i) d.add_chain({}, kWr);
  d.ring().publish();
  EXPECT_EQ(r.dev.serve(0), 3);
  // Disable, re-send the memory table (DPDK virtio-user does this), enable.
  EXPECT_EQ(r.acked(Request::kSetVringEnable, VringState{0, 0}), 0u);
  EXPECT_FALSE(r.session.queue_running(0));
  EXPECT_EQ(r.send_mem_table(), 0u);
  EXPECT_EQ(r.acked(Request::kSetVringEnable, VringState{0, 1}), 0u);
  ASSERT_TRUE(r.session.queue_running(0));
  d.add_chain({}, kWr);
  d.ring().publish();
  EXPECT_EQ(r.dev.serve(0), 1);  // only the new one: the base carried over
  ASSERT_TRUE(r.fe.send_struct(Request::kGetVringBase, VringState{0, 0}).ok());
  r.pump();
  EXPECT_EQ(r.reply().as<VringState>().num, 4u);
}

TEST(VhostSession, MemTableWhileRunningRestartsRings) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  r.start_ring(0, d);
  auto* before = r.dev.running[0].queue;
  EXPECT_EQ(r.send_mem_table(), 0u);  // rings stopped and restarted around it
  ASSERT_TRUE(r.session.queue_running(0));
  EXPECT_EQ(r.dev.running[0].queue, before);
  d.add_chain({}, kWr);
  d.ring().publish();
  EXPECT_EQ(r.dev.serve(0), 1);
}

TEST(VhostSession, CallFdSwapKeepsRingRunning) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  r.start_ring(0, d);
  UniqueFd other = test::make_eventfd();
  int fd = other.get();
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{0}, std::span(&fd, 1)), 0u);
  EXPECT_TRUE(r.session.queue_running(0));
  ASSERT_EQ(r.dev.call_changes.size(), 1u);
  // The no-fd flag: no interrupts from now on.
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{kVringNoFdFlag}), 0u);
  ASSERT_EQ(r.dev.call_changes.size(), 2u);
  EXPECT_EQ(r.dev.call_changes[1].second, -1);
  EXPECT_TRUE(r.session.queue_running(0));
}

TEST(VhostSession, WithoutProtocolFeaturesKickStartsTheRing) {
  Rig r;
  EXPECT_FALSE(r.set(Request::kSetFeatures, kDevFeatures).close);
  ASSERT_TRUE(r.fe.send_empty(Request::kSetOwner).ok());
  r.pump();
  auto t = r.table();
  auto fds = t.raw();
  ASSERT_TRUE(r.fe.send(static_cast<uint32_t>(Request::kSetMemTable), t.payload, fds).ok());
  EXPECT_FALSE(r.pump().close);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  auto c = d.device_config();
  ASSERT_TRUE(r.fe.send_struct(Request::kSetVringNum, VringState{0, 16}).ok());
  r.pump();
  VringAddr a{0, 0, Frontend::uva_of(r.guest, c.desc_addr), Frontend::uva_of(r.guest, c.used_addr),
              Frontend::uva_of(r.guest, c.avail_addr), 0};
  ASSERT_TRUE(r.fe.send_struct(Request::kSetVringAddr, a).ok());
  r.pump();
  UniqueFd kick = test::make_eventfd();
  int k = kick.get();
  ASSERT_TRUE(r.fe.send_struct(Request::kSetVringKick, uint64_t{0}, std::span(&k, 1)).ok());
  EXPECT_FALSE(r.pump().close);
  EXPECT_TRUE(r.session.queue_running(0));  // no SET_VRING_ENABLE needed
}

TEST(VhostSession, ConfigSpace) {
  Rig r;
  r.negotiate();
  struct {
    ConfigHeader h;
    uint8_t data[8];
  } get{{4, 8, 0}, {}};
  ASSERT_TRUE(r.fe.send_struct(Request::kGetConfig, get).ok());
  r.pump();
  Message m = r.reply();
  ASSERT_EQ(m.hdr.size, sizeof get);
  EXPECT_EQ(m.payload[sizeof(ConfigHeader)], 5);  // cfg[4]
  struct {
    ConfigHeader h;
    uint8_t data[4];
  } set{{8, 4, 0}, {0xaa, 0xbb, 0xcc, 0xdd}};
  static_assert(sizeof set == sizeof(ConfigHeader) + 4);
  EXPECT_EQ(r.acked(Request::kSetConfig, set), 0u);
  ASSERT_EQ(r.dev.config_writes.size(), 1u);
  EXPECT_EQ(r.dev.config_writes[0].first, 8u);
  // A window past the end of config space.
  struct {
    ConfigHeader h;
    uint8_t data[8];
  } bad{{20, 8, 0}, {}};
  EXPECT_EQ(r.acked(Request::kSetConfig, bad), 1u);
}

TEST(VhostSession, MemSlots) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.get_u64(Request::kGetMaxMemSlots), GuestMemory::kMaxRegions);
  auto t = r.table();
  MemRegion g;
  std::memcpy(&g, t.payload.data() + sizeof(MemTableHeader), sizeof g);
  int fd = t.fds[0].get();
  EXPECT_EQ(r.acked(Request::kAddMemReg, SingleMemRegion{0, g}, std::span(&fd, 1)), 0u);
  EXPECT_EQ(r.session.memory().snapshot()->regions().size(), 1u);
  EXPECT_EQ(r.acked(Request::kAddMemReg, SingleMemRegion{0, g}, std::span(&fd, 1)), 1u);  // overlap
  EXPECT_EQ(r.acked(Request::kRemMemReg, SingleMemRegion{0, g}, std::span(&fd, 1)), 0u);
  EXPECT_TRUE(r.session.memory().snapshot()->regions().empty());
  EXPECT_EQ(r.acked(Request::kRemMemReg, SingleMemRegion{0, g}), 1u);  // not there any more
}

TEST(VhostSession, StatusAndResetDevice) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  r.start_ring(0, d);
  EXPECT_EQ(r.acked(Request::kSetStatus, uint64_t{0xf}), 0u);
  EXPECT_EQ(r.get_u64(Request::kGetStatus), 0xfu);
  EXPECT_EQ(r.acked(Request::kResetDevice, uint64_t{0}), 1u);  // payload where none belongs
  ASSERT_TRUE(r.fe.send_empty(Request::kResetDevice, kVersion | kFlagNeedReply).ok());
  r.pump();
  EXPECT_EQ(r.reply().as<uint64_t>(), 0u);
  EXPECT_FALSE(r.session.queue_running(0));
  EXPECT_GE(r.dev.resets, 1);
  EXPECT_EQ(r.get_u64(Request::kGetStatus), 0u);
}

TEST(VhostSession, InflightRegion) {
  Rig r;
  r.negotiate();
  Message m = r.get_inflight(2, 16);
  auto in = m.as<Inflight>();
  EXPECT_EQ(in.mmap_size, 2 * virtq::inflight_queue_bytes(16));
  EXPECT_EQ(in.num_queues, 2);
  ASSERT_EQ(m.fds.size(), 1u);
  int fd = m.fds[0].get();
  // Handing it back (what QEMU does after a reconnect) is accepted...
  EXPECT_EQ(r.acked(Request::kSetInflightFd, in, std::span(&fd, 1)), 0u);
  // ...but not with sizes that do not match, more queues than the device has,
  // or a region past the end of the file.
  Inflight bad = in;
  bad.mmap_size += 64;
  EXPECT_EQ(r.acked(Request::kSetInflightFd, bad, std::span(&fd, 1)), 1u);
  bad = in;
  bad.num_queues = 5;
  EXPECT_EQ(r.acked(Request::kSetInflightFd, bad, std::span(&fd, 1)), 1u);
  bad = in;
  bad.mmap_offset = 4096;
  EXPECT_EQ(r.acked(Request::kSetInflightFd, bad, std::span(&fd, 1)), 1u);
  // Ours is sealed: the front-end can neither shrink it under our mapping
  // nor grow it.
  int seals = ::fcntl(fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW), F_SEAL_SHRINK | F_SEAL_GROW);
  EXPECT_NE(::ftruncate(fd, 0), 0);
  EXPECT_EQ(errno, EPERM);
  // GET_INFLIGHT_FD has its own reply: a refusal ends the session.
  ASSERT_TRUE(r.fe.send_struct(Request::kGetInflightFd, Inflight{0, 0, 1, 100, 0}).ok());
  Response resp = r.pump();
  EXPECT_TRUE(resp.close);
  EXPECT_EQ(resp.error, Errc::kQueueBadSize);  // 100 is not a power of two
}

// The inflight region is not replaced while a ring runs: a worker writes it
// per request (replacing it once left the worker writing through an unmapped
// pointer).
TEST(VhostSession, InflightRegionIsNotReplacedUnderARunningRing) {
  Rig r;
  r.negotiate();
  Message m = r.get_inflight(2, 64);
  auto in = m.as<Inflight>();
  ASSERT_EQ(m.fds.size(), 1u);
  int fd = m.fds[0].get();
  EXPECT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 64});
  r.start_ring(0, d);
  ASSERT_TRUE(r.session.queue_running(0));
  EXPECT_EQ(r.acked(Request::kSetInflightFd, in, std::span(&fd, 1)), 1u);
  ASSERT_TRUE(r.fe.send_struct(Request::kGetInflightFd, Inflight{0, 0, 2, 64, 0}).ok());
  Response resp = r.pump();
  EXPECT_TRUE(resp.close);
  EXPECT_EQ(resp.error, Errc::kQueueRunning);
  EXPECT_TRUE(r.session.queue_running(0));
}

// Eventfds from the front-end are made non-blocking: a kick the peer drains
// first, or a call counter it saturates, cannot stop a worker.
TEST(VhostSession, EventfdsFromThePeerAreUsedWithoutBlocking) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.send_mem_table(), 0u);
  UniqueFd blocking(::eventfd(0, EFD_CLOEXEC));
  ASSERT_EQ(::fcntl(blocking.get(), F_GETFL) & O_NONBLOCK, 0);
  int fd = blocking.get();
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{0}, std::span(&fd, 1)), 0u);
  ASSERT_NE(::fcntl(blocking.get(), F_GETFL) & O_NONBLOCK, 0);  // (else the write below would block)
  UniqueFd k2(::eventfd(0, EFD_CLOEXEC));
  fd = k2.get();
  EXPECT_EQ(r.acked(Request::kSetVringErr, uint64_t{1}, std::span(&fd, 1)), 0u);
  EXPECT_NE(::fcntl(k2.get(), F_GETFL) & O_NONBLOCK, 0);
  // A saturated counter: the write a worker would make fails at once.
  uint64_t max = 0xfffffffffffffffeull, one = 1;
  ASSERT_EQ(::write(blocking.get(), &max, sizeof max), 8);
  EXPECT_EQ(::write(blocking.get(), &one, sizeof one), -1);
  EXPECT_EQ(errno, EAGAIN);
}

// A peer's misbehaviour costs the log a bounded number of lines.
TEST(LogLimit, BurstThenOnePerInterval) {
  LogLimit l(3, 50);
  unsigned long long left_out = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(l.allow(&left_out));
    EXPECT_EQ(left_out, 0u);
  }
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(l.allow(&left_out));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  EXPECT_TRUE(l.allow(&left_out));
  EXPECT_EQ(left_out, 1000u);  // the line says how many were left out
  EXPECT_FALSE(l.allow(&left_out));
}

// --- malformed messages. With REPLY_ACK the refusal is an ack of 1 and the
// session lives on; without it the session is closed.
TEST(VhostMalformed, WrongSizeClosesWithoutAck) {
  Rig r;
  uint32_t four = 4;
  ASSERT_TRUE(r.fe.send_struct(Request::kSetFeatures, four).ok());
  Response resp = r.pump();
  EXPECT_TRUE(resp.close);
  EXPECT_EQ(resp.error, Errc::kMsgBadSize);
}

TEST(VhostMalformed, WrongSizeAckedWithReplyAck) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.acked(Request::kSetVringNum, uint32_t{16}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{0, 16}), 0u);  // still serving
}

TEST(VhostMalformed, TooManyFds) {
  Rig r;
  r.negotiate();
  UniqueFd a = test::make_eventfd(), b = test::make_eventfd();
  int fds[2] = {a.get(), b.get()};
  EXPECT_EQ(r.acked(Request::kSetVringKick, uint64_t{0}, fds), 1u);
  // An fd together with the no-fd flag, and no fd without it.
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{kVringNoFdFlag}, std::span(fds, 1)), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{0}), 1u);
  // More fds than regions.
  auto t = r.table();
  std::vector<int> extra = t.raw();
  extra.push_back(a.get());
  ASSERT_TRUE(r.fe.send(static_cast<uint32_t>(Request::kSetMemTable), t.payload, extra,
                        kVersion | kFlagNeedReply).ok());
  Response resp = r.pump();
  EXPECT_EQ(resp.error, Errc::kMsgBadFdCount);
  EXPECT_EQ(r.reply().as<uint64_t>(), 1u);
}

TEST(VhostMalformed, UnknownRequest) {
  Rig r;
  r.negotiate();
  for (uint32_t req : {6u, 22u, 35u, 99u, 0xffffffffu}) {
    ASSERT_TRUE(r.fe.send(req, {}, {}, kVersion | kFlagNeedReply).ok());
    Response resp = r.pump();
    EXPECT_EQ(resp.error, Errc::kMsgUnknownRequest) << req;
    EXPECT_EQ(r.reply().as<uint64_t>(), 1u);
  }
}

TEST(VhostMalformed, BadVersionFlags) {
  Rig r;
  ASSERT_TRUE(r.fe.send(static_cast<uint32_t>(Request::kGetFeatures), {}, {}, 0).ok());
  EXPECT_EQ(r.pump().error, Errc::kMsgBadVersion);
  ASSERT_TRUE(r.fe.send(static_cast<uint32_t>(Request::kGetFeatures), {}, {},
                        kVersion | kFlagReply).ok());
  EXPECT_EQ(r.pump().error, Errc::kMsgBadVersion);
}

TEST(VhostMalformed, NotNegotiated) {
  Rig r;  // no SET_PROTOCOL_FEATURES yet
  struct {
    ConfigHeader h;
    uint8_t d[4];
  } get{{0, 4, 0}, {}};
  ASSERT_TRUE(r.fe.send_struct(Request::kGetConfig, get).ok());
  Response resp = r.pump();
  EXPECT_TRUE(resp.close);
  EXPECT_EQ(resp.error, Errc::kMsgNotNegotiated);
}

// QEMU's vhost-user-net disables its extra queue pairs right after
// SET_PROTOCOL_FEATURES, before SET_FEATURES acks PROTOCOL_FEATURES: taken
// (the ring is gated by it once acked); before any protocol negotiation it
// is refused.
TEST(VhostSession, VringEnableBeforeSetFeaturesAsQemuSendsIt) {
  Rig r;
  ASSERT_TRUE(r.fe.send_struct(Request::kSetVringEnable, VringState{0, 0}).ok());
  Response early = r.pump();
  EXPECT_EQ(early.error, Errc::kMsgNotNegotiated);
  Rig q;
  EXPECT_EQ(q.get_u64(Request::kGetFeatures), kDevFeatures | (1ull << kFProtocolFeatures));
  EXPECT_EQ(q.get_u64(Request::kGetProtocolFeatures), kPf);
  EXPECT_FALSE(q.set(Request::kSetProtocolFeatures, kPf).close);
  EXPECT_EQ(q.acked(Request::kSetVringEnable, VringState{0, 0}), 0u);
  EXPECT_FALSE(q.set(Request::kSetFeatures, kDevFeatures | (1ull << kFProtocolFeatures)).close);
  ASSERT_EQ(q.send_mem_table(), 0u);
  MockDriver d(q.guest, QueueLayout{.size = 16});
  q.start_ring(0, d);  // ends with SET_VRING_ENABLE 1
  EXPECT_TRUE(q.session.queue_running(0));
}

TEST(VhostMalformed, FeaturesNeverOffered) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.acked(Request::kSetFeatures, uint64_t{1ull << 40}), 1u);
  EXPECT_EQ(r.acked(Request::kSetProtocolFeatures, uint64_t{1ull << kPfLogShmfd}), 1u);
}

TEST(VhostMalformed, RegionsOverlappingPastEofZeroSized) {
  Rig r;
  r.negotiate();
  UniqueFd m1 = test::make_memfd(1 << 20), m2 = test::make_memfd(1 << 20);
  auto send = [&](MemRegion a, MemRegion b) {
    std::vector<uint8_t> p(sizeof(MemTableHeader) + 2 * sizeof(MemRegion));
    MemTableHeader h{2, 0};
    std::memcpy(p.data(), &h, sizeof h);
    std::memcpy(p.data() + sizeof h, &a, sizeof a);
    std::memcpy(p.data() + sizeof h + sizeof a, &b, sizeof b);
    int fds[2] = {m1.get(), m2.get()};
    EXPECT_TRUE(r.fe.send(static_cast<uint32_t>(Request::kSetMemTable), p, fds,
                          kVersion | kFlagNeedReply).ok());
    Response resp = r.pump();
    EXPECT_EQ(r.reply().as<uint64_t>(), 1u);
    return resp.error;
  };
  EXPECT_EQ(send({0, 1 << 20, 0x10000000, 0}, {0x80000, 1 << 20, 0x20000000, 0}),
            Errc::kRegionOverlap);
  EXPECT_EQ(send({0, 1 << 20, 0x10000000, 0}, {0x200000, 2 << 20, 0x20000000, 0}),
            Errc::kRegionPastEndOfFile);
  EXPECT_EQ(send({0, 1 << 20, 0x10000000, 0}, {0x200000, 0, 0x20000000, 0}),
            Errc::kRegionZeroSize);
  EXPECT_TRUE(r.session.memory().snapshot()->regions().empty());  // nothing half-applied
}

TEST(VhostMalformed, VringAddressOutsideMemory) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  EXPECT_EQ(r.acked(Request::kSetVringAddr, VringAddr{0, 0, 0x1000, 0x2000, 0x3000, 0}), 1u);
  // Mapped but misaligned.
  uint64_t uva = Frontend::uva_of(r.guest, 0x100000);
  EXPECT_EQ(r.acked(Request::kSetVringAddr, VringAddr{0, 0, uva + 8, uva + 4096, uva + 8192, 0}),
            1u);
}

TEST(VhostMalformed, QueueIndexOutOfRange) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{2, 16}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringBase, VringState{200, 0}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringEnable, VringState{7, 1}), 1u);
  UniqueFd e = test::make_eventfd();
  int fd = e.get();
  EXPECT_EQ(r.acked(Request::kSetVringKick, uint64_t{5}, std::span(&fd, 1)), 1u);
}

TEST(VhostMalformed, SizeNotPowerOfTwo) {
  Rig r;
  r.negotiate();
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{0, 100}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{0, 0}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{0, 65536}), 1u);
}

TEST(VhostMalformed, GetVringBaseOfQueueNeverSetUp) {
  Rig r;
  r.negotiate();
  ASSERT_TRUE(r.fe.send_struct(Request::kGetVringBase, VringState{1, 0}).ok());
  Response resp = r.pump();
  EXPECT_TRUE(resp.close);  // GET_VRING_BASE has its own reply: no ack to give
  EXPECT_EQ(resp.error, Errc::kVringNotConfigured);
}

TEST(VhostMalformed, KickFdThatIsNotAnEventfd) {
  Rig r;
  r.negotiate();
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  int fd = rd.get();
  EXPECT_EQ(r.acked(Request::kSetVringKick, uint64_t{0}, std::span(&fd, 1)), 1u);
  UniqueFd mem = test::make_memfd(4096);
  fd = mem.get();
  EXPECT_EQ(r.acked(Request::kSetVringCall, uint64_t{0}, std::span(&fd, 1)), 1u);
}

TEST(VhostMalformed, RunningRingRefusesReconfiguration) {
  Rig r;
  r.negotiate();
  ASSERT_EQ(r.send_mem_table(), 0u);
  MockDriver d(r.guest, QueueLayout{.size = 16});
  r.start_ring(0, d);
  EXPECT_EQ(r.acked(Request::kSetVringNum, VringState{0, 32}), 1u);
  EXPECT_EQ(r.acked(Request::kSetVringBase, VringState{0, 3}), 1u);
  EXPECT_TRUE(r.session.queue_running(0));  // and it keeps running
}

// --- the channel itself
TEST(VhostChannel, PeerClosed) {
  Frontend fe;
  fe.close_front();
  Message m;
  EXPECT_EQ(recv_message(fe.back_fd(), m).error(), Errc::kPeerClosed);
}

TEST(VhostChannel, PayloadTooLarge) {
  Frontend fe;
  MsgHeader h{1, kVersion, static_cast<uint32_t>(kMaxPayload + 1)};
  ASSERT_EQ(::write(fe.front_fd(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
  Message m;
  EXPECT_EQ(recv_message(fe.back_fd(), m).error(), Errc::kMsgTooLarge);
}

TEST(VhostChannel, TruncatedPayload) {
  Frontend fe;
  MsgHeader h{2, kVersion, 8};
  ASSERT_EQ(::write(fe.front_fd(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
  ASSERT_EQ(::write(fe.front_fd(), "abc", 3), 3);
  fe.close_front();
  Message m;
  EXPECT_EQ(recv_message(fe.back_fd(), m).error(), Errc::kMsgTruncated);
}

TEST(VhostChannel, TooManyFdsAreCutOffAndClosed) {
  Frontend fe;
  std::vector<UniqueFd> evs;
  std::vector<int> raw;
  for (unsigned i = 0; i < kMaxFds + 4; ++i) {
    evs.push_back(test::make_eventfd());
    raw.push_back(evs.back().get());
  }
  // Bypass send_message's own limit with a raw sendmsg.
  MsgHeader h{3, kVersion, 0};
  iovec iov{&h, sizeof h};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * raw.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * raw.size());
  std::memcpy(CMSG_DATA(c), raw.data(), sizeof(int) * raw.size());
  ASSERT_EQ(::sendmsg(fe.front_fd(), &msg, 0), static_cast<ssize_t>(sizeof h));
  Message m;
  EXPECT_EQ(recv_message(fe.back_fd(), m).error(), Errc::kMsgTruncated);
}

// --- MessageReader: what the back-end serving untrusted peers uses

// A message split anywhere, over as many writes as the peer likes, with its
// fd on the first part: assembled, never waited for.
TEST(VhostMessageReader, AssemblesAMessageSplitAnywhere) {
  Frontend fe;
  UniqueFd ev = test::make_eventfd();
  uint64_t payload = 0x1122334455667788ull;
  MsgHeader h{static_cast<uint32_t>(Request::kSetVringKick), kVersion, 8};
  std::vector<uint8_t> bytes(sizeof h + 8);
  std::memcpy(bytes.data(), &h, sizeof h);
  std::memcpy(bytes.data() + sizeof h, &payload, 8);
  MessageReader rd;
  auto got = rd.read(fe.back_fd());
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got.value());  // nothing there: no wait
  // The header with the fd (send_message sends the header alone when given
  // no payload), then the payload a byte at a time.
  int raw = ev.get();
  ASSERT_TRUE(send_message(fe.front_fd(), h, {}, {&raw, 1}).ok());
  for (size_t k = sizeof h; k < bytes.size(); ++k) {
    got = rd.read(fe.back_fd());
    ASSERT_TRUE(got.ok());
    EXPECT_FALSE(got.value()) << k;
    EXPECT_EQ(rd.pending(), k);
    ASSERT_EQ(::write(fe.front_fd(), &bytes[k], 1), 1);
  }
  got = rd.read(fe.back_fd());
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got.value());
  EXPECT_EQ(rd.message().hdr.request, h.request);
  EXPECT_EQ(rd.message().as<uint64_t>(), payload);
  ASSERT_EQ(rd.message().fds.size(), 1u);
  rd.next();
  EXPECT_EQ(rd.pending(), 0u);
  EXPECT_TRUE(rd.message().fds.empty());
}

TEST(VhostMessageReader, AHeaderSplitAndPipelinedMessagesInOrder) {
  Frontend fe;
  MsgHeader a{static_cast<uint32_t>(Request::kGetFeatures), kVersion, 0};
  MsgHeader b{static_cast<uint32_t>(Request::kGetProtocolFeatures), kVersion, 0};
  MsgHeader c{static_cast<uint32_t>(Request::kSetOwner), kVersion, 0};
  ASSERT_EQ(::write(fe.front_fd(), &a, 5), 5);  // five bytes of a header
  MessageReader rd;
  auto got = rd.read(fe.back_fd());
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got.value());
  EXPECT_EQ(rd.pending(), 5u);
  // The rest of it and two more messages in one write.
  std::vector<uint8_t> rest(reinterpret_cast<uint8_t*>(&a) + 5, reinterpret_cast<uint8_t*>(&a) + sizeof a);
  rest.insert(rest.end(), reinterpret_cast<uint8_t*>(&b), reinterpret_cast<uint8_t*>(&b) + sizeof b);
  rest.insert(rest.end(), reinterpret_cast<uint8_t*>(&c), reinterpret_cast<uint8_t*>(&c) + sizeof c);
  ASSERT_EQ(::write(fe.front_fd(), rest.data(), rest.size()), static_cast<ssize_t>(rest.size()));
  for (const MsgHeader& want : {a, b, c}) {
    got = rd.read(fe.back_fd());
    ASSERT_TRUE(got.ok());
    ASSERT_TRUE(got.value());
    EXPECT_EQ(rd.message().hdr.request, want.request);
    rd.next();
  }
  got = rd.read(fe.back_fd());
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got.value());
}

TEST(VhostMessageReader, Errors) {
  {
    Frontend fe;
    fe.close_front();
    MessageReader rd;
    EXPECT_EQ(rd.read(fe.back_fd()).error(), Errc::kPeerClosed);
  }
  {
    Frontend fe;  // closed mid-message
    MsgHeader h{2, kVersion, 8};
    ASSERT_EQ(::write(fe.front_fd(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
    ASSERT_EQ(::write(fe.front_fd(), "abc", 3), 3);
    MessageReader rd;
    auto got = rd.read(fe.back_fd());
    ASSERT_TRUE(got.ok());
    EXPECT_FALSE(got.value());
    fe.close_front();
    EXPECT_EQ(rd.read(fe.back_fd()).error(), Errc::kMsgTruncated);
  }
  {
    Frontend fe;  // a size the stream cannot be resynchronised after
    MsgHeader h{1, kVersion, static_cast<uint32_t>(kMaxPayload + 1)};
    ASSERT_EQ(::write(fe.front_fd(), &h, sizeof h), static_cast<ssize_t>(sizeof h));
    MessageReader rd;
    EXPECT_EQ(rd.read(fe.back_fd()).error(), Errc::kMsgTooLarge);
  }
  {
    // More than kMaxFds over one message's parts.
    Frontend fe;
    std::vector<UniqueFd> evs;
    std::vector<int> raw;
    for (unsigned i = 0; i < kMaxFds; ++i) {
      evs.push_back(test::make_eventfd());
      raw.push_back(evs.back().get());
    }
    MsgHeader h{static_cast<uint32_t>(Request::kSetMemTable), kVersion, 8};
    ASSERT_TRUE(send_message(fe.front_fd(), h, {}, raw).ok());  // header alone, 8 fds
    MessageReader rd;
    auto got = rd.read(fe.back_fd());
    ASSERT_TRUE(got.ok());
    EXPECT_FALSE(got.value());
    // The payload's 8 bytes carry one more fd.
    uint64_t x = 0;
    int one = raw[0];
    iovec iov{&x, 8};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &one, sizeof one);
    ASSERT_EQ(::sendmsg(fe.front_fd(), &msg, 0), 8);
    EXPECT_EQ(rd.read(fe.back_fd()).error(), Errc::kMsgBadFdCount);
  }
}

// A peer that does not read its replies: the back-end's send fails at once
// instead of waiting for room.
TEST(VhostMessageReader, ANonBlockingReplyToAPeerThatDoesNotReadFails) {
  Frontend fe;
  int sz = 4096;
  ::setsockopt(fe.back_fd(), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  MsgHeader h{static_cast<uint32_t>(Request::kGetConfig), kVersion | kFlagReply, kMaxPayload};
  std::vector<uint8_t> payload(kMaxPayload, 0xab);
  Status s;
  for (int i = 0; i < 10000 && s.ok(); ++i) s = send_message(fe.back_fd(), h, payload, {}, /*nonblocking=*/true);
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace sluice::vhost
