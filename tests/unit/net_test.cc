// virtio-net ports on a switch, end to end in process: mock drivers transmit
// and post receive buffers, a real worker moves the frames.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "dataplane/net/net_device.h"
#include "dataplane/net/switch.h"
#include "dataplane/virtq/ring.h"
#include "tests/support/mock_guest.h"
#include "tests/support/vhost_frontend.h"

namespace sluice::net {
namespace {

using virtq::DriverBuf;
using virtq::UsedBuf;

constexpr uint64_t kModern = (1ull << virtq::kFVersion1) | (1ull << kFMrgRxbuf) | (1ull << kFCtrlVq) |
                             (1ull << kFCtrlRx) | (1ull << kFCtrlMacAddr) | (1ull << kFCsum) |
                             (1ull << kFGuestCsum) | (1ull << kFMq);

struct Frame {
  VnetHdr hdr{};
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> eth_frame(uint64_t dst, uint64_t src, size_t len, uint8_t fill) {
  std::vector<uint8_t> f(std::max<size_t>(len, 14), fill);
  for (int i = 0; i < 6; ++i) {
    f[static_cast<size_t>(i)] = static_cast<uint8_t>(dst >> (40 - 8 * i));
    f[static_cast<size_t>(6 + i)] = static_cast<uint8_t>(src >> (40 - 8 * i));
  }
  f[12] = 0x88;
  f[13] = 0xb5;
  for (size_t i = 14; i < len; ++i) f[i] = static_cast<uint8_t>(fill + i);
  f.resize(len);  // a runt is cut short
  return f;
}

struct Port {
  struct Q {
    std::unique_ptr<test::MockDriver> drv;
    virtq::SplitQueue q;
    UniqueFd kick, call;
    bool started = false;
  };
  std::vector<std::unique_ptr<Q>> qs;  // rx0, tx0, rx1, tx1, ..., ctrl
  std::unique_ptr<NetDevice> dev;      // destroyed first: it stops the queues
  uint32_t hdr_len = 12;
};

constexpr uint64_t kFaultRegion = 0x8000000;

struct Rig {
  Worker worker{WorkerOptions{.name = "t", .poll_us = 100}};
  // Region 1 is for the tests of guest memory that faults; everything else
  // is allocated from region 0.
  test::MockGuest g{{{0x100000, 64u << 20}, {kFaultRegion, 1 << 20}}};
  Switch sw;
  std::vector<std::unique_ptr<Port>> ports;
  bool event_idx = false;

  explicit Rig(uint64_t aging_s = 300) : sw("t", worker, aging_s) { EXPECT_TRUE(worker.start().ok()); }
  ~Rig() {
    ports.clear();
    worker.stop();
  }

  Port& add(NetOptions o, uint64_t features = kModern, bool in_order = true, uint16_t qsize = 64) {
    auto p = std::make_unique<Port>();
    auto d = NetDevice::create(o, sw);
    EXPECT_TRUE(d.ok()) << d.error().name();
    p->dev = std::move(d.value());
    p->dev->set_driver_features(features & p->dev->device_features());
    p->hdr_len = p->dev->hdr_len();
    for (uint16_t i = 0; i < p->dev->max_queues(); ++i) {
      auto q = std::make_unique<Port::Q>();
      test::QueueLayout l{.size = qsize, .event_idx = event_idx, .in_order = in_order,
                          .batching = p->dev->batching(i)};
      q->drv = std::make_unique<test::MockDriver>(g, l);
      EXPECT_TRUE(q->q.configure(q->drv->device_config()).ok());
      EXPECT_TRUE(q->q.attach(g.table()).ok());
      q->q.set_base(0);
      q->kick = test::make_eventfd();
      q->call = test::make_eventfd();
      p->qs.push_back(std::move(q));
    }
    for (uint16_t i = 0; i < p->dev->max_queues(); ++i) start(*p, i);
    ports.push_back(std::move(p));
    return *ports.back();
  }
  void start(Port& p, uint16_t i) {
    Port::Q& q = *p.qs[i];
    EXPECT_TRUE(p.dev->queue_started({i, &q.q, q.kick.get(), q.call.get()}).ok());
    q.started = true;
  }
  void stop(Port& p, uint16_t i) {
    p.dev->queue_stopped(i);
    p.qs[i]->started = false;
  }
  void kick(Port& p, uint16_t i) {
    p.qs[i]->drv->ring().publish();
    uint64_t one = 1;
    (void)!::write(p.qs[i]->kick.get(), &one, sizeof one);
  }
  // Posts n receive buffers of `size` bytes (as `segs` descriptors each).
  // `head` (if any) is written at the start of each buffer over the filler.
  std::vector<uint64_t> post_rx(Port& p, unsigned n, uint32_t size, uint16_t q = 0,
                                std::span<const uint8_t> head = {}) {
    std::vector<uint64_t> addrs;
    for (unsigned k = 0; k < n; ++k) {
      uint64_t a = g.alloc(size);
      g.fill(a, size, 0xee);
      g.write(a, std::as_bytes(head));
      DriverBuf b{a, size, true};
      EXPECT_TRUE(p.qs[2 * q]->drv->ring().add({&b, 1}, false, a).ok());
      addrs.push_back(a);
    }
    kick(p, static_cast<uint16_t>(2 * q));
    return addrs;
  }
  // Transmits header + frame (header as the driver fills it: zeroes but for
  // the fields given), split into two descriptors when `split`.
  void send(Port& p, const std::vector<uint8_t>& frame, VnetHdr h = {}, bool split = false, uint16_t q = 0) {
    uint32_t hl = p.hdr_len;
    uint64_t a = g.alloc(hl + frame.size());
    g.write(a, std::as_bytes(std::span(reinterpret_cast<const uint8_t*>(&h), hl)));
    g.write(a + hl, std::as_bytes(std::span(frame)));
    std::vector<DriverBuf> b;
    if (split) {
      b.push_back({a, hl, false});
      if (!frame.empty()) b.push_back({a + hl, static_cast<uint32_t>(frame.size()), false});
    } else {
      b.push_back({a, static_cast<uint32_t>(hl + frame.size()), false});
    }
    EXPECT_TRUE(p.qs[2 * q + 1]->drv->ring().add(b, false, a).ok());
    kick(p, static_cast<uint16_t>(2 * q + 1));
  }
  std::vector<UsedBuf> used(Port& p, uint16_t qi, size_t n, int ms = 5000) {
    std::vector<UsedBuf> out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      UsedBuf u{};
      auto r = p.qs[qi]->drv->ring().get_used(u);
      EXPECT_TRUE(r.ok());
      if (r.ok() && r.value())
        out.push_back(u);
      else
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return out;
  }
  // Waits for n frames on p's receive queue q (each may span buffers).
  std::vector<Frame> receive(Port& p, size_t n, uint16_t q = 0, int ms = 5000) {
    std::vector<Frame> out;
    std::vector<UsedBuf> pend;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      auto u = used(p, static_cast<uint16_t>(2 * q), 1, 50);
      if (u.empty()) continue;
      pend.push_back(u[0]);
      Frame f;
      std::memcpy(&f.hdr, g.host(pend[0].token), p.hdr_len);
      uint16_t nb = p.hdr_len == 12 ? f.hdr.num_buffers : 1;
      if (pend.size() < nb) continue;
      for (size_t i = 0; i < pend.size(); ++i) {
        uint32_t skip = i == 0 ? p.hdr_len : 0;
        const auto* b = reinterpret_cast<const uint8_t*>(g.host(pend[i].token));
        f.bytes.insert(f.bytes.end(), b + skip, b + pend[i].len);
      }
      pend.clear();
      out.push_back(std::move(f));
    }
    return out;
  }
  // Sends one control command; returns the ack byte (or -1: no answer).
  int control(Port& p, uint8_t cls, uint8_t cmd, const std::vector<uint8_t>& data, bool ack_room = true) {
    uint16_t qi = static_cast<uint16_t>(p.qs.size() - 1);
    uint64_t a = g.alloc(2 + data.size() + 1);
    std::vector<uint8_t> c{cls, cmd};
    c.insert(c.end(), data.begin(), data.end());
    g.write(a, std::as_bytes(std::span(c)));
    g.fill(a + c.size(), 1, 0x77);
    std::vector<DriverBuf> b{{a, static_cast<uint32_t>(c.size()), false}};
    if (ack_room) b.push_back({a + c.size(), 1, true});
    EXPECT_TRUE(p.qs[qi]->drv->ring().add(b, false, a).ok());
    kick(p, qi);
    auto u = used(p, qi, 1);
    if (u.empty()) return -1;
    if (!ack_room) return u[0].len == 0 ? -2 : -3;
    EXPECT_EQ(u[0].len, 1u);
    return static_cast<int>(static_cast<uint8_t>(*g.host(a + c.size())));
  }
};

NetOptions opts(const char* name, uint64_t mac, PortMode m = PortMode::kSwitch, uint16_t pairs = 1) {
  NetOptions o;
  o.name = name;
  o.mac = mac;
  o.mode = m;
  o.queue_pairs = pairs;
  o.queue_size = 256;
  return o;
}

// A port that may send with any source MAC (mac-lock=off).
NetOptions unlocked(const char* name, uint64_t mac, uint32_t max_macs = 64) {
  NetOptions o = opts(name, mac);
  o.mac_lock = false;
  o.max_macs = max_macs;
  return o;
}

constexpr uint64_t kA = 0x525400000001ull, kB = 0x525400000002ull, kC = 0x525400000003ull;
constexpr uint64_t kBcast = 0xffffffffffffull;

TEST(NetSwitch, FloodsLearnsAndForwards) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  Port& c = r.add(opts("c", kC));
  for (Port* p : {&a, &b, &c}) r.post_rx(*p, 8, 2048);
  // Broadcast from a: b and c get it, a does not.
  auto f1 = eth_frame(kBcast, kA, 100, 1);
  r.send(a, f1);
  for (Port* p : {&b, &c}) {
    auto got = r.receive(*p, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].bytes, f1);
    EXPECT_EQ(got[0].hdr.num_buffers, 1);
    EXPECT_EQ(got[0].hdr.flags, 0);
  }
  // b answers a: a was learned, so only a gets it.
  auto f2 = eth_frame(kA, kB, 64, 2);
  r.send(b, f2, {}, /*split=*/true);
  auto got = r.receive(a, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, f2);
  EXPECT_TRUE(r.receive(c, 1, 0, 200).empty());
  auto table = r.sw.mac_table();
  ASSERT_EQ(table.size(), 2u);
  EXPECT_EQ(table[0].mac, kA);
  EXPECT_EQ(table[0].port, "a");
  EXPECT_EQ(table[1].port, "b");
  // Unknown unicast floods.
  r.send(c, eth_frame(0x020000000099ull, kC, 80, 3));
  EXPECT_EQ(r.receive(a, 1).size(), 1u);
  EXPECT_EQ(r.receive(b, 1).size(), 1u);
  EXPECT_EQ(a.dev->stats().tx_packets.load(), 1u);
  EXPECT_EQ(a.dev->stats().rx_packets.load(), 2u);
  EXPECT_EQ(b.dev->stats().rx_bytes.load(), 100u + 80u);
  EXPECT_EQ(r.sw.flooded(), 2u);
}

TEST(NetSwitch, AMovedMacFollowsItsNewPortAndARemovedPortIsForgotten) {
  Rig r;
  Port& a = r.add(unlocked("a", kA));
  Port& b = r.add(unlocked("b", kB));
  r.post_rx(a, 4, 2048);
  r.post_rx(b, 4, 2048);
  r.send(a, eth_frame(kBcast, kC, 64, 1));  // kC seen on a
  ASSERT_EQ(r.receive(b, 1).size(), 1u);
  r.send(b, eth_frame(kBcast, kC, 64, 2));  // kC moved to b
  ASSERT_EQ(r.receive(a, 1).size(), 1u);
  auto t = r.sw.mac_table();
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].port, "b");
  r.ports.pop_back();  // b goes
  EXPECT_TRUE(r.sw.mac_table().empty());
  EXPECT_EQ(r.sw.ports().size(), 1u);
}

TEST(NetSwitch, AgedEntriesAreForgottenAndFramesFloodAgain) {
  Rig r(/*aging_s=*/1);
  // Unlocked: a locked port's MAC is known without learning (below).
  Port& a = r.add(unlocked("a", kA));
  Port& b = r.add(unlocked("b", kB));
  Port& c = r.add(unlocked("c", kC));
  for (Port* p : {&a, &b, &c}) r.post_rx(*p, 4, 2048);
  r.send(a, eth_frame(kBcast, kA, 64, 1));
  ASSERT_EQ(r.receive(b, 1).size(), 1u);
  ASSERT_EQ(r.receive(c, 1).size(), 1u);
  r.send(b, eth_frame(kA, kB, 64, 2));  // a is known: only a gets it
  ASSERT_EQ(r.receive(a, 1).size(), 1u);
  EXPECT_TRUE(r.receive(c, 1, 0, 100).empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_TRUE(r.sw.mac_table().empty());
  uint64_t flooded = r.sw.flooded();
  r.send(b, eth_frame(kA, kB, 64, 3));  // aged out: flooded to a and c
  EXPECT_EQ(r.receive(a, 1).size(), 1u);
  EXPECT_EQ(r.receive(c, 1).size(), 1u);
  EXPECT_EQ(r.sw.flooded(), flooded + 1);
}

TEST(NetDevice, EventIdxRingsCarryEveryFrame) {
  Rig r;
  r.event_idx = true;
  uint64_t f = kModern | (1ull << virtq::kFEventIdx);
  Port& a = r.add(opts("a", kA), f);
  Port& b = r.add(opts("b", kB), f);
  r.post_rx(b, 40, 2048);
  for (int i = 0; i < 40; ++i) {
    r.send(a, eth_frame(kB, kA, 60 + static_cast<size_t>(i), static_cast<uint8_t>(i)));
    if (i % 10 == 9) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let the worker sleep between
  }
  auto got = r.receive(b, 40);
  ASSERT_EQ(got.size(), 40u);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(got[i].bytes, eth_frame(kB, kA, 60 + i, static_cast<uint8_t>(i)));
}

TEST(NetDevice, MalformedTransmitsAreCountedAndThePortKeepsWorking) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  r.post_rx(b, 8, 2048);
  // Shorter than the vnet header: a buffer of 5 bytes.
  uint64_t x = r.g.alloc(16);
  DriverBuf s{x, 5, false};
  ASSERT_TRUE(a.qs[1]->drv->ring().add({&s, 1}, false, x).ok());
  r.kick(a, 1);
  r.send(a, eth_frame(kB, kA, 10, 1));    // runt
  r.send(a, eth_frame(kB, kA, 1600, 1));  // above MTU 1500 + 14 (+4)
  VnetHdr bad{};
  bad.flags = kHdrFNeedsCsum;
  bad.csum_start = 60;
  bad.csum_offset = 10;
  r.send(a, eth_frame(kB, kA, 64, 1), bad);  // checksum field past the end
  auto good = eth_frame(kB, kA, 200, 9);
  r.send(a, good);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, good);
  // Every transmit buffer came back.
  EXPECT_EQ(r.used(a, 1, 5).size(), 5u);
  const PortStats& st = a.dev->stats();
  EXPECT_EQ(st.dropped(Drop::kShortHeader), 1u);
  EXPECT_EQ(st.dropped(Drop::kRunt), 1u);
  EXPECT_EQ(st.dropped(Drop::kOversize), 1u);
  EXPECT_EQ(st.dropped(Drop::kBadCsum), 1u);
  EXPECT_EQ(st.tx_packets.load(), 1u);
}

TEST(NetDevice, ReceiveChainsWithoutRoomAreReturnedAndDropped) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  // b's first receive buffer is read-only (hostile), the second fine.
  uint64_t ro = r.g.alloc(256);
  DriverBuf rb{ro, 256, false};
  ASSERT_TRUE(b.qs[0]->drv->ring().add({&rb, 1}, false, ro).ok());
  r.post_rx(b, 2, 2048);
  auto f = eth_frame(kB, kA, 300, 4);
  r.send(a, f);
  r.send(a, f);
  auto u = r.used(b, 0, 1);
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0].token, ro);
  EXPECT_EQ(u[0].len, 0u);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, f);
  EXPECT_EQ(b.dev->stats().dropped(Drop::kRxBadChain), 1u);
}

TEST(NetDevice, MergeableBuffersCarryALargeFrame) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  r.post_rx(b, 6, 256);
  auto f = eth_frame(kB, kA, 1000, 5);
  r.send(a, f, {}, true);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].hdr.num_buffers, 4);  // 12 + 1000 bytes in 256-byte buffers
  EXPECT_EQ(got[0].bytes, f);
  // Two buffers left, not enough for another: nothing is consumed, it is
  // dropped, and the two take the next frame.
  r.send(a, eth_frame(kB, kA, 1000, 6));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(b.dev->stats().dropped(Drop::kNoRxBuffer), 1u);
  auto small = eth_frame(kB, kA, 100, 7);
  r.send(a, small);
  got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, small);
}

TEST(NetDevice, WithoutMergeableBuffersASmallBufferIsLeftAndTheFrameDropped) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB), kModern & ~(1ull << kFMrgRxbuf));
  EXPECT_EQ(b.hdr_len, 12u);  // VERSION_1 keeps num_buffers
  r.post_rx(b, 1, 256);
  r.send(a, eth_frame(kB, kA, 1000, 5));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(b.dev->stats().dropped(Drop::kRxTooSmall), 1u);
  auto f = eth_frame(kB, kA, 200, 6);
  r.send(a, f);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, f);
}

TEST(NetDevice, LegacyTenByteHeader) {
  Rig r;
  uint64_t legacy = (1ull << kFCtrlVq) | (1ull << kFCtrlRx);
  Port& a = r.add(opts("a", kA), legacy, false);
  Port& b = r.add(opts("b", kB), kModern);
  EXPECT_EQ(a.hdr_len, 10u);
  r.post_rx(a, 2, 2048);
  r.post_rx(b, 2, 2048);
  auto f = eth_frame(kB, kA, 90, 1);
  r.send(a, f);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, f);
  auto g2 = eth_frame(kA, kB, 70, 2);
  r.send(b, g2);
  got = r.receive(a, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, g2);
}

// A UDP/IPv4 frame whose UDP checksum field holds the pseudo-header sum, as
// a driver with CSUM leaves it.
std::vector<uint8_t> udp_frame(uint64_t dst, uint64_t src, VnetHdr& h) {
  auto f = eth_frame(dst, src, 14 + 20 + 8 + 26, 0);
  f[12] = 0x08;
  f[13] = 0x00;
  uint8_t ip[20] = {0x45, 0, 0, 54, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2};
  std::memcpy(f.data() + 14, ip, 20);
  uint8_t* u = f.data() + 34;
  u[0] = 0x12; u[1] = 0x34; u[2] = 0x56; u[3] = 0x78; u[4] = 0; u[5] = 34;
  for (int i = 0; i < 26; ++i) u[8 + i] = static_cast<uint8_t>(i * 7);
  // Pseudo header: src, dst, proto 17, length 34.
  uint32_t sum = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 34;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  u[6] = static_cast<uint8_t>(sum >> 8);
  u[7] = static_cast<uint8_t>(sum);
  h.flags = kHdrFNeedsCsum;
  h.csum_start = 34;
  h.csum_offset = 6;
  return f;
}

bool udp_checksum_ok(const std::vector<uint8_t>& f) {
  uint32_t sum = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 34;
  for (size_t i = 34; i < f.size(); i += 2) sum += uint32_t{f[i]} << 8 | (i + 1 < f.size() ? f[i + 1] : 0);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return sum == 0xffff;
}

TEST(NetDevice, PartialChecksumsAreCarriedOrFinished) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));                                     // GUEST_CSUM
  Port& c = r.add(opts("c", kC), kModern & ~(1ull << kFGuestCsum));  // no GUEST_CSUM
  r.post_rx(b, 2, 2048);
  r.post_rx(c, 2, 2048);
  VnetHdr h{};
  auto f = udp_frame(kBcast, kA, h);
  EXPECT_FALSE(udp_checksum_ok(f));
  r.send(a, f, h, true);
  auto gb = r.receive(b, 1);
  ASSERT_EQ(gb.size(), 1u);
  EXPECT_EQ(gb[0].hdr.flags, kHdrFNeedsCsum);
  EXPECT_EQ(gb[0].hdr.csum_start, 34);
  EXPECT_EQ(gb[0].hdr.csum_offset, 6);
  EXPECT_EQ(gb[0].bytes, f);  // untouched: b finishes it
  auto gc = r.receive(c, 1);
  ASSERT_EQ(gc.size(), 1u);
  EXPECT_EQ(gc[0].hdr.flags, 0);
  EXPECT_TRUE(udp_checksum_ok(gc[0].bytes));
}

// The header is written only where it differs from what the buffer held (a
// recycled buffer keeps a driver's cache line clean): whatever was there, the
// driver reads exactly the header of this frame.
TEST(NetDevice, ReceiveHeaderIsExactWhateverTheBufferHeld) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  VnetHdr want{};
  want.num_buffers = 1;
  VnetHdr stale_hi = want;  // first 8 bytes right, num_buffers wrong
  stale_hi.num_buffers = 7;
  VnetHdr stale_lo = want;  // last 4 bytes right, flags and gso wrong
  stale_lo.flags = kHdrFNeedsCsum;
  stale_lo.gso_type = 3;
  stale_lo.csum_start = 99;
  for (const VnetHdr* h : {&want, &stale_hi, &stale_lo}) {
    r.post_rx(b, 1, 2048, 0, std::span(reinterpret_cast<const uint8_t*>(h), b.hdr_len));
    auto f = eth_frame(kB, kA, 64, 1);
    r.send(a, f);
    auto got = r.receive(b, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(std::memcmp(&got[0].hdr, &want, b.hdr_len), 0);
    EXPECT_EQ(got[0].bytes, f);
  }
}

TEST(NetDevice, ControlQueueAnswersAndRefuses) {
  Rig r;
  Port& a = r.add(opts("a", kA, PortMode::kSwitch, 2));
  EXPECT_EQ(a.dev->max_queues(), 5);
  EXPECT_EQ(a.dev->queue_num(), 2u);
  EXPECT_EQ(r.control(a, kCtrlMq, kCtrlMqVqPairsSet, {1, 0}), kCtrlOk);
  EXPECT_EQ(a.dev->active_pairs(), 1);
  EXPECT_EQ(r.control(a, kCtrlMq, kCtrlMqVqPairsSet, {0, 0}), kCtrlErr);   // below 1
  EXPECT_EQ(r.control(a, kCtrlMq, kCtrlMqVqPairsSet, {3, 0}), kCtrlErr);   // above max
  EXPECT_EQ(r.control(a, kCtrlMq, kCtrlMqVqPairsSet, {2}), kCtrlErr);      // short
  EXPECT_EQ(r.control(a, kCtrlMq, 7, {1, 0}), kCtrlErr);                   // bad command
  EXPECT_EQ(r.control(a, 9, 0, {}), kCtrlErr);                             // bad class
  EXPECT_EQ(r.control(a, kCtrlRx, kCtrlRxPromisc, {0}), kCtrlOk);
  EXPECT_FALSE(a.dev->promisc());
  EXPECT_EQ(r.control(a, kCtrlRx, kCtrlRxPromisc, {0, 0}), kCtrlErr);
  EXPECT_EQ(r.control(a, kCtrlRx, 4, {1}), kCtrlErr);  // NOUNI: CTRL_RX_EXTRA not offered
  // MAC table: 1 unicast, 0 multicast.
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacTableSet, {1, 0, 0, 0, 2, 0, 0, 0, 0, 9, 0, 0, 0, 0}), kCtrlOk);
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacTableSet, {2, 0, 0, 0, 2, 0, 0, 0, 0, 9}), kCtrlErr);  // count past the data
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacTableSet, {0, 0, 0, 0, 0, 0, 0, 0, 1}), kCtrlErr);   // trailing byte
  // A locked port keeps the operator's MAC: another is refused, its own accepted.
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacAddrSet, {0x52, 0x54, 0, 0, 0, 0x42}), kCtrlErr);
  EXPECT_EQ(a.dev->mac(), kA);
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacAddrSet, {0x52, 0x54, 0, 0, 0, 1}), kCtrlOk);
  EXPECT_EQ(r.control(a, kCtrlMac, kCtrlMacAddrSet, {0x01, 0, 0, 0, 0, 1}), kCtrlErr);  // multicast
  EXPECT_EQ(r.control(a, 2, 0, {}, /*ack_room=*/false), -2);  // no room for the ack: returned empty
  EXPECT_EQ(a.dev->ctrl_commands(), 4u);
  EXPECT_GE(a.dev->ctrl_errors(), 11u);
  // An unlocked port's guest may change its MAC.
  Port& u = r.add(unlocked("u", kC));
  EXPECT_EQ(r.control(u, kCtrlMac, kCtrlMacAddrSet, {0x52, 0x54, 0, 0, 0, 0x42}), kCtrlOk);
  EXPECT_EQ(u.dev->mac(), 0x525400000042ull);
  // The port still forwards.
  Port& b = r.add(opts("b", kB));
  r.post_rx(b, 1, 2048);
  r.send(a, eth_frame(kBcast, kA, 64, 1));
  EXPECT_EQ(r.receive(b, 1).size(), 1u);
}

TEST(NetDevice, RxFilterKeepsUnwantedFloodsOut) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  r.post_rx(b, 4, 2048);
  ASSERT_EQ(r.control(b, kCtrlRx, kCtrlRxPromisc, {0}), kCtrlOk);
  ASSERT_EQ(r.control(b, kCtrlRx, kCtrlRxAllmulti, {0}), kCtrlOk);
  r.send(a, eth_frame(0x020000000099ull, kA, 64, 1));  // unknown unicast: flooded, filtered at b
  r.send(a, eth_frame(0x01005e000001ull, kA, 64, 2));  // multicast not in b's table
  auto bc = eth_frame(kBcast, kA, 64, 3);
  r.send(a, bc);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, bc);
  EXPECT_EQ(b.dev->stats().dropped(Drop::kFiltered), 2u);
}

TEST(NetDevice, ReflectSinkAndSource) {
  Rig r;
  Port& re = r.add(opts("reflect", kA, PortMode::kReflect));
  r.post_rx(re, 2, 2048);
  auto f = eth_frame(kB, kA, 128, 3);
  r.send(re, f);
  auto got = r.receive(re, 1);
  ASSERT_EQ(got.size(), 1u);
  auto want = eth_frame(kA, kB, 128, 3);
  EXPECT_EQ(got[0].bytes, want);

  Port& sink = r.add(opts("sink", kB, PortMode::kSink));
  for (int i = 0; i < 10; ++i) r.send(sink, eth_frame(kC, kB, 64, 1));
  EXPECT_EQ(r.used(sink, 1, 10).size(), 10u);
  EXPECT_EQ(sink.dev->stats().tx_packets.load(), 10u);
  EXPECT_EQ(sink.dev->stats().tx_bytes.load(), 640u);

  NetOptions so = opts("source", kC, PortMode::kSource);
  so.source_frame = 100;
  Port& src = r.add(so);
  r.post_rx(src, 16, 2048);
  auto frames = r.receive(src, 16);
  ASSERT_EQ(frames.size(), 16u);
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_EQ(frames[i].bytes.size(), 100u);
    uint64_t seq;
    std::memcpy(&seq, frames[i].bytes.data() + 14, 8);
    EXPECT_EQ(seq, i);
    EXPECT_EQ(frames[i].bytes[0], 0x52);  // to the port's own MAC
  }
}

TEST(NetDevice, AStoppedReceiverCountsNotReady) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  r.stop(b, 0);
  r.send(a, eth_frame(kB, kA, 64, 1));
  EXPECT_EQ(r.used(a, 1, 1).size(), 1u);
  EXPECT_EQ(b.dev->stats().dropped(Drop::kRxNotReady), 1u);
  r.start(b, 0);
  r.post_rx(b, 1, 2048);
  r.send(a, eth_frame(kB, kA, 64, 2));
  EXPECT_EQ(r.receive(b, 1).size(), 1u);
}

TEST(NetDevice, RefusesBadOptions) {
  Worker w{WorkerOptions{}};
  Switch sw{"t", w};
  NetOptions o = opts("x", kA);
  o.queue_pairs = 0;
  EXPECT_FALSE(NetDevice::create(o, sw).ok());
  o = opts("x", 0x010000000001ull);  // multicast MAC
  EXPECT_FALSE(NetDevice::create(o, sw).ok());
  o = opts("x", kA, PortMode::kSource);
  o.source_frame = 2000;  // above MTU + 14
  EXPECT_FALSE(NetDevice::create(o, sw).ok());
}

TEST(NetSwitch, MacParsing) {
  uint64_t m = 0;
  EXPECT_TRUE(parse_mac("52:54:00:AB:cd:01", m));
  EXPECT_EQ(m, 0x525400abcd01ull);
  EXPECT_EQ(format_mac(m), "52:54:00:ab:cd:01");
  EXPECT_FALSE(parse_mac("52:54:00:ab:cd", m));
  EXPECT_FALSE(parse_mac("52-54-00-ab-cd-01", m));
  EXPECT_FALSE(parse_mac("52:54:00:ab:cd:0g", m));
}

// A sender whose frame lies on memory its front-end cut away: the frame is
// dropped (counted), flooded or not, the page is poisoned so the next frame
// from it is dropped without a fault, and traffic from good memory flows.
TEST(NetDevice, FramesOnFaultingMemoryAreDroppedAndCounted) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  Port& c = r.add(opts("c", kC));
  for (Port* p : {&b, &c}) r.post_rx(*p, 8, 2048);
  // A broadcast whose bytes lie in region 1, cut before it is sent.
  auto f = eth_frame(kBcast, kA, 200, 3);
  const uint64_t at = kFaultRegion + 4096;
  VnetHdr h{};
  r.g.write(at, std::as_bytes(std::span(reinterpret_cast<const uint8_t*>(&h), a.hdr_len)));
  r.g.write(at + a.hdr_len, std::as_bytes(std::span(f)));
  ASSERT_EQ(::ftruncate(r.g.table()->regions()[1].backing->fd.get(), 0), 0);
  DriverBuf d{at, static_cast<uint32_t>(a.hdr_len + f.size()), false};
  ASSERT_TRUE(a.qs[1]->drv->ring().add({&d, 1}, false, at).ok());  // the ring is in region 0
  r.kick(a, 1);
  ASSERT_EQ(r.used(a, 1, 1).size(), 1u);
  // The same page again: refused without a fault.
  const uint64_t faults = fault::total();
  ASSERT_TRUE(a.qs[1]->drv->ring().add({&d, 1}, false, at).ok());
  r.kick(a, 1);
  ASSERT_EQ(r.used(a, 1, 1).size(), 1u);
  EXPECT_EQ(fault::total(), faults);
  // A frame from good memory reaches both.
  auto g2 = eth_frame(kBcast, kA, 100, 9);
  r.send(a, g2);
  for (Port* p : {&b, &c}) {
    auto got = r.receive(*p, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].bytes, g2);
  }
  // The sender met the fault reading the header: counted at the sender,
  // twice (the fault, then the poisoned page); nothing reached b or c.
  const auto drops = [](Port& p) { return p.dev->stats().drops[static_cast<unsigned>(Drop::kGuestFault)].load(); };
  EXPECT_EQ(drops(a), 2u);
  EXPECT_EQ(drops(b), 0u);
  EXPECT_EQ(drops(c), 0u);
  EXPECT_EQ(r.g.table()->poison().size(), 1u);
  EXPECT_EQ(r.g.table()->poison().at(0).gpa, at);

  // Header and Ethernet header in good memory, the rest of the frame on
  // another cut page: the receivers meet the fault while copying; the first
  // takes it, the flood's second sees the frame marked. Both drop it.
  auto f3 = eth_frame(kBcast, kA, 300, 5);
  const uint64_t head = r.g.alloc(a.hdr_len + 14), tail = kFaultRegion + 3 * 4096;
  r.g.write(head, std::as_bytes(std::span(reinterpret_cast<const uint8_t*>(&h), a.hdr_len)));
  r.g.write(head + a.hdr_len, std::as_bytes(std::span(f3).first(14)));
  std::vector<DriverBuf> two{{head, a.hdr_len + 14, false}, {tail, static_cast<uint32_t>(f3.size() - 14), false}};
  ASSERT_TRUE(a.qs[1]->drv->ring().add(two, false, head).ok());
  r.kick(a, 1);
  ASSERT_EQ(r.used(a, 1, 1).size(), 1u);
  auto g4 = eth_frame(kBcast, kA, 100, 11);
  r.send(a, g4);
  for (Port* p : {&b, &c}) {
    auto empty = r.used(*p, 0, 1);  // the buffer the faulted copy went to: handed back empty
    ASSERT_EQ(empty.size(), 1u);
    EXPECT_EQ(empty[0].len, 0u);
    auto got = r.receive(*p, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].bytes, g4);  // the faulted frame never arrived
    EXPECT_EQ(drops(*p), 1u);
  }
  EXPECT_EQ(r.g.table()->poison().size(), 2u);
}

// A guest may post a receive buffer over the very bytes it sends: the copy
// between its own buffers must be defined (memmove; ASan flags a memcpy).
TEST(NetDevice, AReceiveBufferOverlappingTheFrameSentIsServed) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(unlocked("b", kB));
  (void)b;
  uint64_t buf = r.g.alloc(4096);
  auto f = eth_frame(kBcast, kA, 1000, 7);
  const uint32_t hl = a.hdr_len;
  // A's frame at buf + 64; A's own receive buffer (it gets nothing of its
  // own) is not the point: B posts its receive buffer over the same bytes.
  VnetHdr h{};
  r.g.write(buf + 64, std::as_bytes(std::span(reinterpret_cast<const uint8_t*>(&h), hl)));
  r.g.write(buf + 64 + hl, std::as_bytes(std::span(f)));
  virtq::DriverBuf rx{buf, 2048, true};
  ASSERT_TRUE(b.qs[0]->drv->ring().add({&rx, 1}, false, buf).ok());
  r.kick(b, 0);
  virtq::DriverBuf tx{buf + 64, static_cast<uint32_t>(hl + f.size()), false};
  ASSERT_TRUE(a.qs[1]->drv->ring().add({&tx, 1}, false, buf + 64).ok());
  r.kick(a, 1);
  EXPECT_EQ(r.used(a, 1, 1).size(), 1u);
  auto u = r.used(b, 0, 1);
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0].len, hl + f.size());
  EXPECT_EQ(b.dev->stats().rx_packets.load(), 1u);
}

// ---------------------------------------------------------------- port security

TEST(PortSecurity, ALockedPortSendsOnlyWithItsOwnMac) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));
  r.post_rx(b, 4, 2048);
  r.send(a, eth_frame(kBcast, kC, 64, 1));               // another unicast MAC
  r.send(a, eth_frame(kBcast, 0x01005e000001ull, 64, 2));  // a multicast source
  auto ok = eth_frame(kBcast, kA, 64, 3);
  r.send(a, ok);
  auto got = r.receive(b, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, ok);
  EXPECT_TRUE(r.receive(b, 1, 0, 100).empty());
  EXPECT_EQ(a.dev->stats().dropped(Drop::kSrcMacLocked), 2u);
  EXPECT_EQ(r.used(a, 1, 3).size(), 3u);  // every transmit buffer returned
  auto t = r.sw.mac_table();
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].mac, kA);
}

TEST(PortSecurity, NoPortCanTakeALockedPortsMac) {
  Rig r;
  Port& a = r.add(opts("a", kA));           // locked, has sent nothing yet
  Port& m = r.add(unlocked("m", kB));       // may send with any MAC but a's
  Port& c = r.add(opts("c", kC));
  for (Port* p : {&a, &m, &c}) r.post_rx(*p, 4, 2048);
  r.send(m, eth_frame(kBcast, kA, 64, 1));  // posing as a
  EXPECT_EQ(r.used(m, 1, 1).size(), 1u);
  EXPECT_TRUE(r.receive(c, 1, 0, 100).empty());
  EXPECT_EQ(m.dev->stats().dropped(Drop::kSrcMacOwned), 1u);
  // Traffic for a's MAC goes to a alone, though a never sent: a locked
  // port's MAC is known.
  uint64_t flooded = r.sw.flooded();
  auto f = eth_frame(kA, kC, 64, 2);
  r.send(c, f);
  auto got = r.receive(a, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, f);
  EXPECT_TRUE(r.receive(m, 1, 0, 100).empty());
  EXPECT_EQ(r.sw.flooded(), flooded);
  // Once a is gone, its MAC is free.
  std::swap(r.ports[0], r.ports[2]);
  r.ports.pop_back();  // a
  r.send(m, eth_frame(kBcast, kA, 64, 3));
  EXPECT_EQ(r.receive(c, 1).size(), 1u);
  EXPECT_EQ(m.dev->stats().dropped(Drop::kSrcMacOwned), 1u);
}

// The switch's bucket for a MAC (Switch::hash, kMacBuckets): the tests
// below make MACs that share one probe window.
uint32_t bucket(uint64_t mac) { return static_cast<uint32_t>((mac * 0x9e3779b97f4a7c15ull) >> 40) & 4095; }
std::vector<uint64_t> colliding(uint64_t with, size_t n) {
  std::vector<uint64_t> v;
  for (uint64_t m = 0x020000000001ull; v.size() < n; ++m)
    if (m != with && bucket(m) == bucket(with)) v.push_back(m);
  return v;
}

TEST(PortSecurity, LearningIsBoundedPerPort) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& m = r.add(unlocked("m", kB, /*max_macs=*/8));
  r.post_rx(a, 64, 2048);
  for (uint64_t i = 0; i < 40; ++i) r.send(m, eth_frame(kBcast, 0x020000001000ull + i, 64, 1));
  EXPECT_EQ(r.receive(a, 40).size(), 40u);  // frames still forwarded
  EXPECT_EQ(r.sw.macs_learned(*m.dev), 8u);
  EXPECT_EQ(m.dev->stats().learn_port_limit.load(), 32u);
  EXPECT_EQ(r.sw.mac_table().size(), 8u);
}

TEST(PortSecurity, NoPortEvictsAnothersFreshEntries) {
  Rig r;
  Port& a = r.add(unlocked("a", kA), kModern, true, 256);
  Port& m = r.add(unlocked("m", kB, /*max_macs=*/4096), kModern, true, 256);
  Port& c = r.add(opts("c", kC), kModern, true, 256);
  for (Port* p : {&a, &m, &c}) r.post_rx(*p, 128, 2048);
  // a's MAC, then 100 MACs from m into a's probe window: m recycles its own
  // entries there, never a's.
  auto macs = colliding(kA, 108);
  r.send(a, eth_frame(kBcast, kA, 64, 1));
  for (size_t i = 0; i < 100; ++i) r.send(m, eth_frame(kBcast, macs[i], 64, 2));
  ASSERT_EQ(r.receive(c, 101).size(), 101u);
  auto f = eth_frame(kA, kC, 64, 3);
  r.send(c, f);
  auto got = r.receive(a, 101);  // m's 100 floods, then c's frame
  ASSERT_EQ(got.size(), 101u);
  EXPECT_EQ(got.back().bytes, f);
  EXPECT_EQ(m.dev->stats().learn_table_full.load(), 0u);
  EXPECT_LE(r.sw.macs_learned(*m.dev), 8u);
  // A window full of a's fresh entries: m's new MAC there is not learned.
  constexpr uint64_t kX = 0x020000777777ull;
  auto xs = colliding(kX, 8);
  r.send(a, eth_frame(kBcast, kX, 64, 4));
  for (size_t i = 0; i < 7; ++i) r.send(a, eth_frame(kBcast, xs[i], 64, 4));
  r.send(m, eth_frame(kBcast, xs[7], 64, 5));
  ASSERT_EQ(r.receive(c, 9).size(), 9u);
  EXPECT_EQ(m.dev->stats().learn_table_full.load(), 1u);
  size_t a_entries = 0;
  for (const MacEntry& e : r.sw.mac_table()) a_entries += e.port == "a";
  EXPECT_EQ(a_entries, 9u);  // kA and the eight in kX's window
}

TEST(PortSecurity, FloodsAreRateLimitedPerPort) {
  Rig r;
  NetOptions ao = opts("a", kA);
  ao.flood_rate = 100;  // bucket: 16 frames
  Port& a = r.add(ao, kModern, true, 256);
  Port& b = r.add(opts("b", kB), kModern, true, 256);
  Port& c = r.add(opts("c", kC), kModern, true, 256);
  r.post_rx(b, 128, 2048);
  r.post_rx(c, 128, 2048);
  for (int i = 0; i < 100; ++i) r.send(a, eth_frame(kBcast, kA, 64, 1));
  ASSERT_EQ(r.used(a, 1, 100).size(), 100u);
  uint64_t limited = a.dev->stats().dropped(Drop::kFloodLimit);
  auto got = r.receive(b, 100, 0, 300);
  EXPECT_EQ(got.size() + limited, 100u);
  EXPECT_GE(limited, 60u);  // 16 at once, then 100/s
  // Unicast to a known port is not a flood; another port has its own bucket.
  r.send(a, eth_frame(kB, kA, 64, 2));
  for (int i = 0; i < 20; ++i) r.send(c, eth_frame(kBcast, kC, 64, 3));
  EXPECT_EQ(r.receive(b, 21).size(), 21u);
  EXPECT_EQ(c.dev->stats().dropped(Drop::kFloodLimit), 0u);
}

// A sender's "checksum known good" (DATA_VALID) is the sender's word: only a
// receiver that negotiated GUEST_CSUM (and so may be told it) gets it.
TEST(PortSecurity, DataValidReachesOnlyReceiversThatNegotiatedGuestCsum) {
  Rig r;
  Port& a = r.add(opts("a", kA));
  Port& b = r.add(opts("b", kB));                                            // GUEST_CSUM
  Port& c = r.add(opts("c", kC), kModern & ~(1ull << kFGuestCsum));         // not
  r.post_rx(b, 1, 2048);
  r.post_rx(c, 1, 2048);
  VnetHdr h{};
  h.flags = kHdrFDataValid;
  r.send(a, eth_frame(kBcast, kA, 100, 5), h);
  auto gb = r.receive(b, 1), gc = r.receive(c, 1);
  ASSERT_EQ(gb.size(), 1u);
  ASSERT_EQ(gc.size(), 1u);
  EXPECT_EQ(gb[0].hdr.flags, kHdrFDataValid);
  EXPECT_EQ(gc[0].hdr.flags, 0);
}

TEST(PortSecurity, ALegacyDriverCannotWriteAnotherMac) {
  Worker w{WorkerOptions{}};
  Switch sw{"t", w};
  auto d = NetDevice::create(opts("x", kA), sw);
  ASSERT_TRUE(d.ok());
  (*d)->set_driver_features(0);
  const uint8_t other[6] = {0x52, 0x54, 0, 0, 0, 0x42}, own[6] = {0x52, 0x54, 0, 0, 0, 1};
  EXPECT_EQ((*d)->write_config(0, other).error().code, Errc::kMacLocked);
  EXPECT_TRUE((*d)->write_config(0, own).ok());
  EXPECT_EQ((*d)->mac(), kA);
  NetOptions o = unlocked("y", kB);
  auto u = NetDevice::create(o, sw);
  ASSERT_TRUE(u.ok());
  (*u)->set_driver_features(0);
  EXPECT_TRUE((*u)->write_config(0, other).ok());
  EXPECT_EQ((*u)->mac(), 0x525400000042ull);
}

}  // namespace
}  // namespace sluice::net
