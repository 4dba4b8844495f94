// vfio/virtio_pci and vfio/virtio_blk against the fake kernel's virtio-pci
// device model: capability parsing (and its refusals), feature negotiation,
// the MSI-X vector ladder with refusals at each rung, table-size limits,
// NO_VECTOR for queues that want none, the config-change interrupt, reset,
// and the blk driver end to end with this test playing the device through
// the device side of the ring.
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/kvm.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <gtest/gtest.h>

#include "dataplane/virtq/split_queue.h"
#include "tests/support/fake_vfio.h"
#include "vfio/container.h"
#include "vfio/dma_mapper.h"
#include "tests/support/mock_guest.h"
#include "dataplane/worker/worker.h"
#include "vfio/offload.h"
#include "vfio/passthrough_blk.h"
#include "vfio/virtio_blk.h"
#include "vfio/virtio_pci.h"

namespace sluice {
namespace {

using namespace vfio;
using test::FakeVfio;
using test::FakeVirtio;

const char kAddr[] = "0000:00:10.0";

struct Rig {
  explicit Rig(FakeVirtio model = {}) {
    k.add_group(5);
    dev_model = &k.add_virtio_device(5, kAddr, std::move(model));
    container = std::move(Container::open(k).value());
    group = std::move(Group::open(5, k).value());
    EXPECT_TRUE(group->attach(*container).ok());
    device = std::move(group->open_device(kAddr).value());
  }
  FakeVirtio& v() { return *dev_model->virtio; }
  FakeVfio k;
  test::FakeDevice* dev_model;
  std::unique_ptr<Container> container;
  std::unique_ptr<Group> group;
  std::unique_ptr<Device> device;
};

// ---------------------------------------------------------------- capabilities

std::vector<uint8_t> config_of(const FakeVirtio& m = {}) {
  FakeVfio k;
  k.add_group(1);
  return k.add_virtio_device(1, "x", m).config;
}

TEST(VirtioCaps, ParsesTheFakesLayout) {
  auto caps = parse_virtio_pci_caps(config_of());
  ASSERT_TRUE(caps.ok());
  EXPECT_TRUE(caps->common.present);
  EXPECT_EQ(caps->common.bar, 4);
  EXPECT_EQ(caps->notify.offset, 0x3000u);
  EXPECT_EQ(caps->notify_off_multiplier, 4u);
  EXPECT_TRUE(caps->device.present);
  EXPECT_TRUE(caps->msix);
  EXPECT_EQ(caps->msix_table_size, 3);
  FakeVirtio none;
  none.msix_table = 0;
  auto c0 = parse_virtio_pci_caps(config_of(none));
  ASSERT_TRUE(c0.ok());
  EXPECT_FALSE(c0->msix);
}

TEST(VirtioCaps, Refusals) {
  auto bad = [](auto edit) {
    auto c = config_of();
    edit(c);
    return parse_virtio_pci_caps(c);
  };
  EXPECT_FALSE(bad([](auto& c) { c[PCI_STATUS] = 0; }).ok());                     // no capability list
  EXPECT_FALSE(bad([](auto& c) { c[0x50 + 1] = 0x40; }).ok());                     // a loop
  EXPECT_FALSE(bad([](auto& c) { c[PCI_CAPABILITY_LIST] = 0x10; }).ok());          // into the header
  EXPECT_FALSE(bad([](auto& c) { c[0x40 + 2] = 8; }).ok());                        // short vendor cap
  EXPECT_FALSE(bad([](auto& c) { c[0x50 + 2] = 16; }).ok());                       // notify cap without multiplier
  EXPECT_FALSE(bad([](auto& c) { c[PCI_CAPABILITY_LIST] = 0x50; }).ok());          // common cap skipped: missing
  EXPECT_FALSE(bad([](auto& c) { uint32_t l = 8; std::memcpy(&c[0x40 + 12], &l, 4); }).ok());  // common too short
  EXPECT_FALSE(bad([](auto& c) {  // a capability running past the end of config space
    c[0x88 + 1] = 0xf4; c[0xf4] = PCI_CAP_ID_VNDR; c[0xf5] = 0; c[0xf6] = 16;
  }).ok());
  EXPECT_FALSE(parse_virtio_pci_caps(std::vector<uint8_t>(64)).ok());             // short snapshot
  // A capability naming a reserved BAR is ignored, not fatal: here the
  // device-config one, so the device simply has no device config.
  auto ignored = bad([](auto& c) { c[0x78 + 4] = 7; });
  ASSERT_TRUE(ignored.ok());
  EXPECT_FALSE(ignored->device.present);
  // The first capability of a type wins: a second common cfg pointing
  // elsewhere changes nothing.
  auto first = bad([](auto& c) {
    c[0x88 + 1] = 0xa0;  // after MSI-X
    c[0xa0] = PCI_CAP_ID_VNDR; c[0xa1] = 0; c[0xa2] = 16; c[0xa3] = VIRTIO_PCI_CAP_COMMON_CFG; c[0xa4] = 2;
  });
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->common.bar, 4);
}

TEST(VirtioCaps, WindowsMustFitTheirBar) {
  FakeVfio k;
  k.add_group(5);
  auto& d = k.add_virtio_device(5, kAddr);
  uint32_t off = 0x3f00;  // notify window 0x3f00 + 0x1000 > 16 KiB BAR
  std::memcpy(&d.config[0x50 + 8], &off, 4);
  auto c = Container::open(k);
  auto g = Group::open(5, k);
  ASSERT_TRUE(g.value()->attach(*c.value()).ok());
  auto dev = g.value()->open_device(kAddr);
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(VirtioPci::open(*dev.value()).error(), Errc::kVirtioNoCap);
}

// ---------------------------------------------------------------- features

TEST(VirtioPci, NegotiatesVersion1AndAccessPlatform) {
  Rig r;
  auto p = VirtioPci::open(*r.device);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(p.value()->reset().ok());
  auto f = p.value()->negotiate(uint64_t{1} << VIRTIO_BLK_F_FLUSH);  // not offered: dropped
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.value(), (uint64_t{1} << VIRTIO_F_VERSION_1) | (uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM));
  EXPECT_EQ(r.v().driver_features, f.value());
  EXPECT_TRUE(r.v().status & VIRTIO_CONFIG_S_FEATURES_OK);
}

TEST(VirtioPci, FeatureRefusals) {
  FakeVirtio legacy;
  legacy.features = uint64_t{1} << VIRTIO_BLK_F_FLUSH;  // no VERSION_1
  Rig a(legacy);
  auto pa = VirtioPci::open(*a.device);
  ASSERT_TRUE(pa.ok());
  EXPECT_EQ(pa.value()->negotiate(0).error(), Errc::kVirtioFeatures);
  EXPECT_TRUE(a.v().status & VIRTIO_CONFIG_S_FAILED);
  FakeVirtio stubborn;
  stubborn.refuse_features_ok = true;
  Rig b(stubborn);
  auto pb = VirtioPci::open(*b.device);
  ASSERT_TRUE(pb.ok());
  EXPECT_EQ(pb.value()->negotiate(0).error(), Errc::kVirtioFeatures);
}

// ---------------------------------------------------------------- vectors

struct Ladder {
  explicit Ladder(FakeVirtio m) : r(std::move(m)) {
    p = std::move(VirtioPci::open(*r.device).value());
    EXPECT_TRUE(p->reset().ok());
    EXPECT_TRUE(p->negotiate(0).ok());
  }
  Rig r;
  std::unique_ptr<VirtioPci> p;
  size_t bound_vectors() const {
    auto it = r.dev_model->irq_fds.find(VFIO_PCI_MSIX_IRQ_INDEX);
    if (it == r.dev_model->irq_fds.end()) return 0;
    size_t n = 0;
    for (int fd : it->second) n += fd >= 0;
    return n;
  }
};

TEST(VirtioVectors, PerQueueWhenTheTableHoldsThem) {
  Ladder l(FakeVirtio{});  // table 3, 2 queues
  bool wants[] = {true, true};
  auto pol = l.p->setup_vectors(wants);
  ASSERT_TRUE(pol.ok());
  EXPECT_EQ(pol.value(), VectorPolicy::kPerQueue);
  EXPECT_EQ(l.r.v().config_vector, 0);
  EXPECT_EQ(l.r.v().queues[0].vector, 1);
  EXPECT_EQ(l.r.v().queues[1].vector, 2);
  EXPECT_EQ(l.bound_vectors(), 3u);
  EXPECT_NE(l.p->queue_eventfd(0), l.p->queue_eventfd(1));
}

TEST(VirtioVectors, SharedWhenTheTableIsTooSmall) {
  FakeVirtio m;
  m.msix_table = 2;  // per-queue needs 3: skipped without touching the device
  Ladder l(m);
  bool wants[] = {true, true};
  EXPECT_EQ(l.p->setup_vectors(wants).value(), VectorPolicy::kShared);
  EXPECT_EQ(l.r.v().queues[0].vector, 1);
  EXPECT_EQ(l.r.v().queues[1].vector, 1);
  EXPECT_EQ(l.p->queue_eventfd(0), l.p->queue_eventfd(1));
  EXPECT_EQ(l.bound_vectors(), 2u);
}

TEST(VirtioVectors, SharedWhenTheDeviceRefusesAQueueVector) {
  FakeVirtio m;
  m.refuse_vectors_from = 2;  // room in the table, but vector 2 reads back NO_VECTOR
  Ladder l(m);
  bool wants[] = {true, true};
  EXPECT_EQ(l.p->setup_vectors(wants).value(), VectorPolicy::kShared);
  EXPECT_EQ(l.p->queue_vector(0), 1);
  EXPECT_EQ(l.p->queue_vector(1), 1);
}

TEST(VirtioVectors, NoneWhenEvenTheConfigVectorIsRefused) {
  FakeVirtio m;
  m.refuse_vectors_from = 0;
  Ladder l(m);
  bool wants[] = {true, true};
  EXPECT_EQ(l.p->setup_vectors(wants).value(), VectorPolicy::kNone);
  // Every mapping explicitly NO_VECTOR, no vector left bound in VFIO.
  EXPECT_EQ(l.r.v().config_vector, kVirtioMsiNoVector);
  EXPECT_EQ(l.r.v().queues[0].vector, kVirtioMsiNoVector);
  EXPECT_EQ(l.r.v().queues[1].vector, kVirtioMsiNoVector);
  EXPECT_EQ(l.bound_vectors(), 0u);
  EXPECT_EQ(l.p->queue_eventfd(0), -1);
}

TEST(VirtioVectors, NoneWithoutMsix) {
  FakeVirtio m;
  m.msix_table = 0;
  Ladder l(m);
  bool wants[] = {true};
  EXPECT_EQ(l.p->setup_vectors(wants).value(), VectorPolicy::kNone);
}

TEST(VirtioVectors, QueuesThatWantNoInterruptGetNoVector) {
  Ladder l(FakeVirtio{});
  bool wants[] = {true, false};
  EXPECT_EQ(l.p->setup_vectors(wants).value(), VectorPolicy::kPerQueue);
  EXPECT_EQ(l.r.v().queues[0].vector, 1);
  EXPECT_EQ(l.r.v().queues[1].vector, kVirtioMsiNoVector);
  EXPECT_EQ(l.p->queue_eventfd(1), -1);
  bool too_many[] = {true, true, true};  // 3 queues on a 2-queue device
  EXPECT_EQ(l.p->setup_vectors(too_many).error(), Errc::kVirtioQueueUnavailable);
}

TEST(VirtioVectors, ConfigChangeInterruptArrives) {
  Ladder l(FakeVirtio{});
  bool wants[] = {true, true};
  ASSERT_TRUE(l.p->setup_vectors(wants).ok());
  ASSERT_TRUE(l.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, l.p->config_vector()));
  pollfd pf{l.p->vector_eventfd(l.p->config_vector()), POLLIN, 0};
  EXPECT_EQ(::poll(&pf, 1, 1000), 1);
  pollfd q0{l.p->queue_eventfd(0), POLLIN, 0};
  EXPECT_EQ(::poll(&q0, 1, 0), 0);  // and not on a queue's
}

TEST(VirtioVectors, RebindMovesAVectorToAnotherEventfd) {
  Ladder l(FakeVirtio{});
  bool wants[] = {true, true};
  ASSERT_TRUE(l.p->setup_vectors(wants).ok());
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_TRUE(l.p->rebind_vector(l.p->queue_vector(1), fd).ok());
  EXPECT_EQ(l.p->queue_eventfd(1), fd);
  ASSERT_TRUE(l.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, l.p->queue_vector(1)));
  uint64_t v = 0;
  EXPECT_EQ(::read(fd, &v, sizeof v), static_cast<ssize_t>(sizeof v));
  EXPECT_EQ(l.p->rebind_vector(9, fd).error(), Errc::kVfioIrqBad);
  ::close(fd);
}

// ---------------------------------------------------------------- queues

TEST(VirtioPci, QueueSetupRulesAndReset) {
  Ladder l(FakeVirtio{});
  bool wants[] = {true, true};
  ASSERT_TRUE(l.p->setup_vectors(wants).ok());
  EXPECT_EQ(l.p->enable_queue(0, 512, 0x1000, 0x2000, 0x3000).error(), Errc::kVirtioQueueUnavailable);  // > max
  EXPECT_EQ(l.p->enable_queue(0, 48, 0x1000, 0x2000, 0x3000).error(), Errc::kVirtioQueueUnavailable);   // not 2^n
  EXPECT_EQ(l.p->enable_queue(2, 64, 0x1000, 0x2000, 0x3000).error(), Errc::kVirtioQueueUnavailable);   // no queue 2
  ASSERT_TRUE(l.p->enable_queue(1, 64, 0x100001000, 0x2000, 0x3000).ok());
  EXPECT_EQ(l.r.v().queues[1].size, 64);
  EXPECT_EQ(l.r.v().queues[1].desc, 0x100001000u);
  EXPECT_EQ(l.r.v().queues[1].enable, 1);
  ASSERT_TRUE(l.p->driver_ok().ok());
  l.p->notify(1);
  uint16_t bell;
  std::memcpy(&bell, static_cast<uint8_t*>(l.r.dev_model->bar4) + 0x3000 + 1 * 4, 2);
  EXPECT_EQ(bell, 1);
  // Reset: the device forgets queues and vectors; later doorbells are dropped.
  ASSERT_TRUE(l.p->reset().ok());
  EXPECT_EQ(l.r.v().queues[1].enable, 0);
  EXPECT_EQ(l.r.v().queues[1].vector, kVirtioMsiNoVector);
  std::memset(static_cast<uint8_t*>(l.r.dev_model->bar4) + 0x3000, 0, 16);
  l.p->notify(1);
  std::memcpy(&bell, static_cast<uint8_t*>(l.r.dev_model->bar4) + 0x3000 + 4, 2);
  EXPECT_EQ(bell, 0);
}

TEST(VirtioPci, NotifyOffsetOutsideTheWindowIsRefused) {
  FakeVirtio m;
  m.notify_off_step = 0x800;  // queue 1 -> 0x800 * 4 = 8 KiB, past the 4 KiB window
  Ladder l(m);
  bool wants[] = {true, true};
  ASSERT_TRUE(l.p->setup_vectors(wants).ok());
  ASSERT_TRUE(l.p->enable_queue(0, 64, 0x1000, 0x2000, 0x3000).ok());
  EXPECT_EQ(l.p->enable_queue(1, 64, 0x1000, 0x2000, 0x3000).error(), Errc::kVirtioNoCap);
}

// ---------------------------------------------------------------- blk driver

// The test plays the device: the device side of the ring over the driver's
// arena, IOVA = the arena's addresses.
struct BlkRig {
  BlkRig() : r(model()) {
    mapper = std::make_unique<DmaMapper>(*r.container);
    VirtioBlkOptions o;
    o.queues = 2;
    o.queue_size = 16;
    auto d = VirtioBlkDriver::start(*r.device, *mapper, o);
    EXPECT_TRUE(d.ok());
    drv = std::move(d.value());
    const MemoryTable& t = drv->arena().table();
    table = std::make_shared<const MemoryTable>(
        std::vector<GuestRegion>(t.regions().begin(), t.regions().end()));
    for (uint16_t q = 0; q < 2; ++q) {
      const auto& fq = r.v().queues[q];
      virtq::QueueConfig c;
      c.size = fq.size;
      c.desc_addr = fq.desc;
      c.avail_addr = fq.avail;
      c.used_addr = fq.used;
      EXPECT_TRUE(dq[q].configure(c).ok());
      EXPECT_TRUE(dq[q].attach(table).ok());
      dq[q].set_base(0);
    }
  }
  static FakeVirtio model() {
    FakeVirtio m;
    m.features |= (uint64_t{1} << VIRTIO_BLK_F_MQ) | (uint64_t{1} << VIRTIO_BLK_F_FLUSH);
    uint64_t capacity = 2048;
    std::memcpy(m.device_config.data(), &capacity, 8);
    uint16_t nq = 2;
    std::memcpy(m.device_config.data() + 34, &nq, 2);
    return m;
  }
  Rig r;
  std::unique_ptr<DmaMapper> mapper;
  std::unique_ptr<VirtioBlkDriver> drv;
  std::shared_ptr<const MemoryTable> table;
  virtq::SplitQueue dq[2];
  std::vector<uint8_t> disk = std::vector<uint8_t>(2048 * 512, 0);

  // Serves every request queue q has, then raises its vector.
  int serve(uint16_t q) {
    virtq::Chain c;
    int n = 0;
    while (true) {
      auto got = dq[q].pop(c);
      if (!got.ok() || !got.value()) break;
      auto rd = c.readable();
      auto wr = c.writable();
      virtio_blk_outhdr h;
      std::memcpy(&h, rd[0].iov_base, sizeof h);
      uint32_t len = 0;
      if (h.type == VIRTIO_BLK_T_OUT) {
        std::memcpy(&disk[h.sector * 512], rd[1].iov_base, rd[1].iov_len);
      } else if (h.type == VIRTIO_BLK_T_IN) {
        std::memcpy(wr[0].iov_base, &disk[h.sector * 512], wr[0].iov_len);
        len = static_cast<uint32_t>(wr[0].iov_len);
      }
      *static_cast<uint8_t*>(wr.back().iov_base) = VIRTIO_BLK_S_OK;
      dq[q].push(c.head(), len + 1);
      ++n;
    }
    dq[q].flush();
    (void)r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, drv->pci().queue_vector(q));
    return n;
  }
};

TEST(VirtioBlkDriver, RequestsRoundTripThroughTheRings) {
  BlkRig b;
  VirtioBlkDriver& d = *b.drv;
  EXPECT_EQ(d.capacity_sectors(), 2048u);
  EXPECT_EQ(d.queues(), 2);
  EXPECT_EQ(d.pci().policy(), VectorPolicy::kPerQueue);
  EXPECT_TRUE(d.features() & (uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM));
  // The arena is in the container's IOMMU at the IOVA the rings name.
  EXPECT_TRUE(b.mapper->is_mapped(d.arena().iova(), d.arena().size()));
  auto buf = d.arena().alloc(4096, 4096);
  ASSERT_TRUE(buf.ok());
  auto* mem = reinterpret_cast<uint8_t*>(d.arena().host(buf.value(), 4096));
  for (int i = 0; i < 4096; ++i) mem[i] = static_cast<uint8_t>(i * 7);
  virtq::DriverBuf w{buf.value(), 4096, false};
  ASSERT_TRUE(d.submit(1, VIRTIO_BLK_T_OUT, 8, std::span(&w, 1), 42).ok());
  // The doorbell rang for queue 1.
  uint16_t bell;
  std::memcpy(&bell, static_cast<uint8_t*>(b.r.dev_model->bar4) + 0x3000 + 1 * 4, 2);
  EXPECT_EQ(bell, 1);
  EXPECT_EQ(b.serve(1), 1);
  EXPECT_TRUE(d.wait(1, 1000));
  int done = 0;
  ASSERT_TRUE(d.reap(1, [&](const BlkCompletion& c) {
                 EXPECT_EQ(c.token, 42u);
                 EXPECT_EQ(c.status, VIRTIO_BLK_S_OK);
                 ++done;
               }).ok());
  EXPECT_EQ(done, 1);
  EXPECT_EQ(std::memcmp(&b.disk[8 * 512], mem, 4096), 0);
  // Read it back on queue 0.
  std::memset(mem, 0, 4096);
  virtq::DriverBuf rbuf{buf.value(), 4096, true};
  ASSERT_TRUE(d.submit(0, VIRTIO_BLK_T_IN, 8, std::span(&rbuf, 1), 43).ok());
  EXPECT_EQ(b.serve(0), 1);
  EXPECT_TRUE(d.wait(0, 1000));
  ASSERT_TRUE(d.reap(0, [&](const BlkCompletion& c) { EXPECT_EQ(c.token, 43u); }).ok());
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(mem[i], static_cast<uint8_t>(i * 7));
  EXPECT_EQ(d.interrupts(0), 1u);
  EXPECT_EQ(d.interrupts(1), 1u);
}

TEST(VirtioBlkDriver, AHostileDeviceBreaksOnlyItsQueue) {
  BlkRig b;
  VirtioBlkDriver& d = *b.drv;
  auto buf = d.arena().alloc(512, 512);
  virtq::DriverBuf rbuf{buf.value(), 512, true};
  ASSERT_TRUE(d.submit(0, VIRTIO_BLK_T_IN, 0, std::span(&rbuf, 1), 1).ok());
  // The "device" returns a head that was never made available.
  const auto& fq = b.r.v().queues[0];
  std::byte* used = d.arena().host(fq.used, virtq::used_ring_bytes(fq.size));
  virtq::store_relaxed<uint32_t>(used + virtq::used_entry_off(0), 999);
  virtq::store_release<uint16_t>(used + virtq::kUsedIdxOff, 1);
  auto r = d.reap(0, [](const BlkCompletion&) { FAIL() << "no completion may be delivered"; });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), Errc::kUsedIdOutOfRange);
  // Queue 1 still works.
  ASSERT_TRUE(d.submit(1, VIRTIO_BLK_T_IN, 0, std::span(&rbuf, 1), 2).ok());
  EXPECT_EQ(b.serve(1), 1);
  int got = 0;
  ASSERT_TRUE(d.reap(1, [&](const BlkCompletion&) { ++got; }).ok());
  EXPECT_EQ(got, 1);
}

TEST(VirtioBlkDriver, TeardownResetsTheDeviceAndUnmapsTheArena) {
  auto b = std::make_unique<BlkRig>();
  int resets = b->r.v().resets;
  b->drv.reset();
  EXPECT_GT(b->r.v().resets, resets);
  EXPECT_EQ(b->mapper->kernel_mappings(), 0u);
}

// ---------------------------------------------------------------- offload

// A session's view: guest memory, a front-end ring in it, the queue the
// session would configure, and the kick/call eventfds.
struct OffloadRig {
  OffloadRig() : r(BlkRig::model()), drv(guest, test::QueueLayout{.size = 64, .indirect = false}) {
    auto o = VirtioOffloadDevice::open(*r.device);
    EXPECT_TRUE(o.ok());
    dev = std::move(o.value());
    kick.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    call.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  }
  QueueBinding start(uint16_t base = 0) {
    EXPECT_TRUE(q.configure(drv.device_config()).ok());
    EXPECT_TRUE(q.attach(guest.table()).ok());
    q.set_base(base);
    return QueueBinding{0, &q, kick.get(), call.get(), nullptr};
  }
  uint16_t doorbell(uint16_t queue) {
    uint16_t v;
    std::memcpy(&v, static_cast<uint8_t*>(r.dev_model->bar4) + 0x3000 + queue * 4, 2);
    return v;
  }
  Rig r;
  test::MockGuest guest;
  test::MockDriver drv;
  virtq::SplitQueue q;
  std::unique_ptr<VirtioOffloadDevice> dev;
  UniqueFd kick, call;
};

TEST(VirtioOffload, OffersTheHardwaresFeaturesAndConfig) {
  OffloadRig o;
  EXPECT_EQ(o.dev->device_id(), 2u);  // 0x1042 - 0x1040
  EXPECT_EQ(o.dev->max_queues(), 2);
  EXPECT_EQ(o.dev->max_queue_size(), 256);
  // ACCESS_PLATFORM stays ours; VERSION_1, MQ, FLUSH pass through.
  EXPECT_FALSE(o.dev->device_features() & (uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM));
  EXPECT_TRUE(o.dev->device_features() & (uint64_t{1} << VIRTIO_F_VERSION_1));
  EXPECT_TRUE(o.dev->device_features() & (uint64_t{1} << VIRTIO_BLK_F_MQ));
  uint64_t cap;
  std::memcpy(&cap, o.dev->config().data(), 8);
  EXPECT_EQ(cap, 2048u);
  uint8_t b = 1;
  EXPECT_FALSE(o.dev->write_config(0, std::span(&b, 1)).ok());
}

TEST(VirtioOffload, QueueRunsOnTheDeviceWithTheCallFdOnItsVector) {
  OffloadRig o;
  o.dev->set_driver_features(o.dev->device_features());
  EXPECT_EQ(o.r.v().driver_features & (uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM),
            uint64_t{1} << VIRTIO_F_ACCESS_PLATFORM);
  ASSERT_TRUE(o.dev->queue_started(o.start()).ok());
  // The device queue carries the session's ring addresses (guest physical).
  auto cfg = o.drv.device_config();
  EXPECT_EQ(o.r.v().queues[0].enable, 1);
  EXPECT_EQ(o.r.v().queues[0].desc, cfg.desc_addr);
  EXPECT_EQ(o.r.v().queues[0].avail, cfg.avail_addr);
  EXPECT_EQ(o.r.v().queues[0].used, cfg.used_addr);
  EXPECT_TRUE(o.r.v().status & VIRTIO_CONFIG_S_DRIVER_OK);
  // The device's vector fires the front-end's call fd itself.
  ASSERT_TRUE(o.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, o.r.v().queues[0].vector));
  uint64_t v = 0;
  EXPECT_EQ(::read(o.call.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
  EXPECT_EQ(o.dev->queue_stats(0).call_fd, o.call.get());
  // A kick reaches the doorbell through the relay.
  std::memset(static_cast<uint8_t*>(o.r.dev_model->bar4) + 0x3000, 0xff, 2);
  uint64_t one = 1;
  ASSERT_EQ(::write(o.kick.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  for (int i = 0; i < 1000 && o.dev->queue_stats(0).kicks == 0; ++i) ::usleep(1000);
  EXPECT_EQ(o.dev->queue_stats(0).kicks, 1u);
  EXPECT_EQ(o.doorbell(0), 0);
  // Guest masks its vector: the call fd changes, the device follows.
  UniqueFd other(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  o.dev->call_fd_changed(0, other.get());
  ASSERT_TRUE(o.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, o.r.v().queues[0].vector));
  EXPECT_EQ(::read(other.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
  EXPECT_EQ(::read(o.call.get(), &v, sizeof v), -1);
}

TEST(VirtioOffload, BaseReadBackAndRestartWhereItStopped) {
  OffloadRig o;
  o.dev->set_driver_features(o.dev->device_features());
  ASSERT_TRUE(o.dev->queue_started(o.start()).ok());
  // The "device" used 3 buffers the driver had made available.
  std::byte* avail = o.drv.ring().avail_area();
  std::byte* used = o.drv.ring().used_area();
  virtq::store_release<uint16_t>(avail + virtq::kAvailIdxOff, 3);
  virtq::store_release<uint16_t>(used + virtq::kUsedIdxOff, 3);
  o.dev->queue_stopped(0);
  ASSERT_TRUE(o.dev->stopped_base(0).has_value());
  EXPECT_EQ(*o.dev->stopped_base(0), 3);
  // A re-sent memory table restarts the ring at 3: it simply continues.
  uint64_t resets = static_cast<uint64_t>(o.r.v().resets);
  ASSERT_TRUE(o.dev->queue_started(o.start(3)).ok());
  EXPECT_EQ(static_cast<uint64_t>(o.r.v().resets), resets);
  EXPECT_EQ(o.r.v().queues[0].enable, 1);
}

TEST(VirtioOffload, RefusesWhatAPlainVirtioDeviceCannotDo) {
  OffloadRig o;
  // Queues before features.
  EXPECT_FALSE(o.dev->queue_started(o.start()).ok());
  o.dev->set_driver_features(o.dev->device_features());
  // A ring starting at a non-zero index on a fresh device queue.
  EXPECT_EQ(o.dev->queue_started(o.start(5)).error(), Errc::kQueueRunning);
  EXPECT_EQ(o.r.v().queues[0].enable, 0);
  // Shared or no vectors cannot give each queue its own call fd.
  FakeVirtio m = BlkRig::model();
  m.msix_table = 2;  // 2 queues need 3
  Rig small(m);
  auto d = VirtioOffloadDevice::open(*small.device);
  ASSERT_TRUE(d.ok());
  d.value()->set_driver_features(d.value()->device_features());
  test::MockGuest g;
  test::MockDriver drv(g, test::QueueLayout{.size = 64, .indirect = false});
  virtq::SplitQueue q;
  ASSERT_TRUE(q.configure(drv.device_config()).ok());
  ASSERT_TRUE(q.attach(g.table()).ok());
  q.set_base(0);
  EXPECT_EQ(d.value()->queue_started(QueueBinding{0, &q, -1, -1, nullptr}).error(), Errc::kVfioIrqBad);
}

TEST(VirtioOffload, ResetWhileOffloadedStopsTheDevice) {
  OffloadRig o;
  o.dev->set_driver_features(o.dev->device_features());
  ASSERT_TRUE(o.dev->queue_started(o.start()).ok());
  int resets = o.r.v().resets;
  o.dev->reset();
  EXPECT_GT(o.r.v().resets, resets);
  EXPECT_EQ(o.r.v().status, 0);
  EXPECT_EQ(o.r.v().queues[0].enable, 0);
  EXPECT_FALSE(o.dev->queue_stats(0).running);
  // Kicks are no longer relayed.
  uint64_t one = 1;
  ASSERT_EQ(::write(o.kick.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  ::usleep(20000);
  EXPECT_EQ(o.dev->queue_stats(0).kicks, 0u);
  // And it comes back: features, then the queue from index 0.
  o.dev->set_driver_features(o.dev->device_features());
  ASSERT_TRUE(o.dev->queue_started(o.start()).ok());
  EXPECT_EQ(o.r.v().queues[0].enable, 1);
}

// ---------------------------------------------------------------- KVM irqfd

// The IRQ-bypass wiring, on the host: a VM fd on /dev/kvm (no guest is
// booted), an in-kernel irqchip, an MSI route and a KVM irqfd on an eventfd
// (what QEMU does with a vhost-user call fd). Offloading a queue must hand
// that very eventfd (same open file) to the device's MSI-X vector, and a
// device interrupt must then be consumed by KVM, not left for userspace.
TEST(KvmIrqfd, OffloadHandsTheIrqfdEventfdToTheDeviceVector) {
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) GTEST_SKIP() << "no /dev/kvm";
  UniqueFd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm) GTEST_SKIP() << "KVM_CREATE_VM failed: " << std::strerror(errno);
  if (::ioctl(vm.get(), KVM_CREATE_IRQCHIP, 0) != 0) GTEST_SKIP() << "no in-kernel irqchip";
  // struct kvm_irq_routing is {u32 nr; u32 flags;} and a flexible array of
  // entries. Its C++ sizeof differs from C's (the kernel header's empty
  // flex-array wrapper has size 1 in C++), so the layout and the ioctl
  // number are spelled out with the C size, 8.
  constexpr size_t kRoutingHeader = 8;
  constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, uint64_t);
  alignas(8) std::byte routing[kRoutingHeader + sizeof(kvm_irq_routing_entry)] = {};
  uint32_t nr = 1;
  std::memcpy(routing, &nr, sizeof nr);
  kvm_irq_routing_entry e{};
  e.gsi = 24;
  e.type = KVM_IRQ_ROUTING_MSI;
  e.u.msi.address_lo = 0xfee00000;
  e.u.msi.data = 0x4041;
  std::memcpy(routing + kRoutingHeader, &e, sizeof e);
  ASSERT_EQ(::ioctl(vm.get(), kSetGsiRouting, routing), 0) << std::strerror(errno);
  UniqueFd irqfd_efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(irqfd_efd.get());
  irqfd.gsi = 24;
  ASSERT_EQ(::ioctl(vm.get(), KVM_IRQFD, &irqfd), 0) << std::strerror(errno);

  OffloadRig o;
  o.call = std::move(irqfd_efd);  // the front-end's call fd is the irqfd's eventfd
  o.dev->set_driver_features(o.dev->device_features());
  ASSERT_TRUE(o.dev->queue_started(o.start()).ok());
  uint16_t vector = o.r.v().queues[0].vector;
  const auto& bound = o.r.dev_model->irq_fds.at(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_LT(vector, bound.size());
  // The same open file: kcmp(KCMP_FILE) says 0 for identical descriptions.
  pid_t me = ::getpid();
  EXPECT_EQ(::syscall(SYS_kcmp, me, me, KCMP_FILE, o.call.get(), bound[vector]), 0);
  // A device interrupt is taken by KVM's irqfd: the eventfd counter is
  // consumed in the kernel, nothing is left for userspace to read.
  ASSERT_TRUE(o.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, vector));
  uint64_t v = 0;
  EXPECT_EQ(::read(o.call.get(), &v, sizeof v), -1);
  EXPECT_EQ(errno, EAGAIN);
  // Control: a plain eventfd keeps the signal for userspace.
  UniqueFd plain(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  o.dev->call_fd_changed(0, plain.get());
  ASSERT_TRUE(o.r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, vector));
  EXPECT_EQ(::read(plain.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
}

// ---------------------------------------------------------------- pass-through

// Sluice's worker between a front-end and a device: the front-end's request
// must reach the device as the guest's own descriptors (its guest-physical
// addresses as IOVAs), the device's completion must reach the front-end's
// used ring, with the worker woken by the device's vector.
TEST(PassthroughBlk, GuestDescriptorsReachTheDeviceUnchanged) {
  Rig r(BlkRig::model());
  DmaMapper mapper(*r.container);
  Worker worker{WorkerOptions{.name = "pt", .poll_us = 100}};
  ASSERT_TRUE(worker.start().ok());
  auto pd = PassthroughBlkDevice::open(*r.device, mapper, {&worker}, uint64_t{1} << 38);
  ASSERT_TRUE(pd.ok()) << pd.error().name();
  PassthroughBlkDevice& dev = *pd.value();
  EXPECT_EQ(dev.max_queues(), 2);
  EXPECT_EQ(dev.capacity_bytes(), 2048u * 512);
  EXPECT_TRUE(dev.device_features() & (uint64_t{1} << VIRTIO_BLK_F_FLUSH));

  // The guest, its memory in the device's container (IOVA = guest physical).
  test::MockGuest guest;
  GuestMemoryDma bridge;
  ASSERT_TRUE(bridge.attach(&mapper, *guest.table()).ok());
  test::MockDriver drv(guest, test::QueueLayout{.size = 64, .indirect = false});
  virtq::SplitQueue fq;
  ASSERT_TRUE(fq.configure(drv.device_config()).ok());
  ASSERT_TRUE(fq.attach(guest.table()).ok());
  fq.set_base(0);
  UniqueFd kick(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), call(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  ASSERT_TRUE(dev.queue_started(QueueBinding{0, &fq, kick.get(), call.get(), nullptr}).ok());

  // The device side: its rings in the driver's arena, buffers in guest memory.
  std::vector<GuestRegion> all(dev.driver().arena().table().regions().begin(),
                               dev.driver().arena().table().regions().end());
  for (const GuestRegion& g : guest.table()->regions()) all.push_back(g);
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.guest_phys < b.guest_phys; });
  auto iova_space = std::make_shared<const MemoryTable>(std::move(all));
  virtq::SplitQueue hw;
  const auto& q0 = r.v().queues[0];
  virtq::QueueConfig hc;
  hc.size = q0.size;
  hc.desc_addr = q0.desc;
  hc.avail_addr = q0.avail;
  hc.used_addr = q0.used;
  ASSERT_TRUE(hw.configure(hc).ok());
  ASSERT_TRUE(hw.attach(iova_space).ok());
  hw.set_base(0);

  // The front-end reads 4 KiB at sector 16.
  uint64_t hdr = guest.alloc(16, 16), data = guest.alloc(4096, 4096), st = guest.alloc(1, 1);
  virtio_blk_outhdr h{};
  h.type = VIRTIO_BLK_T_IN;
  h.sector = 16;
  guest.write(hdr, std::as_bytes(std::span(&h, 1)));
  guest.fill(st, 1, 0xff);
  virtq::DriverBuf bufs[] = {{hdr, 16, false}, {data, 4096, true}, {st, 1, true}};
  ASSERT_TRUE(drv.ring().add(bufs, false, 7).ok());
  drv.ring().publish();
  uint64_t one = 1;
  ASSERT_EQ(::write(kick.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));

  // The device sees the guest's own buffers at their guest addresses.
  virtq::Chain c;
  bool popped = false;
  for (int i = 0; i < 2000 && !popped; ++i) {
    auto got = hw.pop(c);
    ASSERT_TRUE(got.ok());
    popped = got.value();
    if (!popped) ::usleep(1000);
  }
  ASSERT_TRUE(popped) << "the worker never passed the request on";
  ASSERT_EQ(c.all().size(), 3u);
  EXPECT_EQ(c.readable()[0].iov_base, guest.host(hdr));   // zero copy: the guest's header
  EXPECT_EQ(c.writable()[0].iov_base, guest.host(data));  // and its data buffer
  EXPECT_EQ(c.writable()[1].iov_base, guest.host(st));    // and its status byte
  std::memset(c.writable()[0].iov_base, 0x5a, 4096);
  *static_cast<uint8_t*>(c.writable()[1].iov_base) = VIRTIO_BLK_S_OK;
  hw.push(c.head(), 4097);
  hw.flush();
  ASSERT_TRUE(r.k.trigger(kAddr, VFIO_PCI_MSIX_IRQ_INDEX, dev.driver().pci().queue_vector(0)));

  // The front-end gets its completion (the worker was woken by the vector).
  virtq::UsedBuf u{};
  bool got = false;
  for (int i = 0; i < 2000 && !got; ++i) {
    auto g = drv.ring().get_used(u);
    ASSERT_TRUE(g.ok());
    got = g.value();
    if (!got) ::usleep(1000);
  }
  ASSERT_TRUE(got);
  EXPECT_EQ(u.token, 7u);
  EXPECT_EQ(u.len, 4097u);
  EXPECT_EQ(static_cast<uint8_t>(*guest.host(st)), VIRTIO_BLK_S_OK);
  EXPECT_EQ(static_cast<uint8_t>(*guest.host(data + 100)), 0x5a);
  EXPECT_GE(dev.stats(0).device_irqs.load(), 1u);
  EXPECT_EQ(dev.stats(0).errors.load(), 0u);
  dev.queue_stopped(0);
  worker.stop();
}

}  // namespace
}  // namespace sluice
