// libFuzzer target: inflight recovery (InflightTracker::recover) over a
// region the front-end wrote, as a back-end restarted after kill -9 reads
// it. The input picks the queue (size, in-order), the ring's used index and
// used entries and the queue's avail ring, and is copied over the inflight
// region. Checked: the heads handed back for resubmission are inside the
// queue and each appears once; popping them (pop_head) and pushing them back
// never leaves guest memory or breaks the driver's view of the used ring;
// recovery followed by begin/pre_put/end keeps the region consistent.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "dataplane/virtq/inflight.h"
#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

using namespace sluice;
using namespace sluice::virtq;

namespace {

struct World {
  test::MockGuest guest{{{0x100000, 16u << 20}}};
  test::MockDriver drivers[4] = {
      {guest, {.size = 8, .event_idx = false, .indirect = false, .in_order = false}},
      {guest, {.size = 64, .event_idx = true, .indirect = false, .in_order = false}},
      {guest, {.size = 16, .event_idx = false, .indirect = false, .in_order = true}},
      {guest, {.size = 256, .event_idx = true, .indirect = true, .in_order = false}},
  };
  uint64_t data = guest.alloc(256 * 512, 64);
  std::vector<std::byte> region = std::vector<std::byte>(inflight_queue_bytes(256));
};

World& world() {
  static World* w = new World();
  return *w;
}

void fail(const char* what) {
  std::fprintf(stderr, "fuzz_inflight: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  World& w = world();
  test::MockDriver& drv = w.drivers[data[0] % 4];
  const uint16_t qsize = drv.layout().size;
  const uint16_t used_idx = static_cast<uint16_t>(data[1] | data[2] << 8);
  const uint8_t ops = data[3];
  data += 4;
  size -= 4;
  // The driver side: every descriptor a one-segment buffer in the data area,
  // every avail slot naming one of them (the device reads those on pop_head).
  drv.reset();
  for (uint16_t i = 0; i < qsize; ++i)
    drv.poke_desc(i, Desc{w.data + uint64_t{i} * 512, 512, kDescFWrite, 0});
  for (uint16_t s = 0; s < qsize; ++s) drv.poke_avail_entry(s, s);
  // The used ring as a previous back-end left it: index and entries from the input.
  std::byte* used = drv.ring().used_area();
  std::memcpy(used + kUsedIdxOff, &used_idx, 2);
  size_t ubytes = std::min<size_t>(size, uint64_t{qsize} * 8);
  std::memcpy(used + 4, data, ubytes);
  data += ubytes;
  size -= ubytes;
  // The inflight region: the rest of the input (the header included).
  const size_t rbytes = inflight_queue_bytes(qsize);
  std::memset(w.region.data(), 0, rbytes);
  std::memcpy(w.region.data(), data, std::min(size, rbytes));
  if (!(ops & 0x80)) {
    // Mostly a region that describes this queue, so that recovery reads
    // its descriptors (the fuzzer's bytes) instead of starting clean.
    auto* h = reinterpret_cast<InflightHeader*>(w.region.data());
    h->version = 1;
    h->desc_num = qsize;
  }

  SplitQueue q;
  if (!q.configure(drv.device_config()).ok() || !q.attach(w.guest.table()).ok()) std::abort();
  InflightTracker t(w.region.data(), qsize);
  std::vector<uint16_t> heads = t.recover(q);
  std::set<uint16_t> seen;
  for (uint16_t h : heads) {
    if (h >= qsize) fail("a head outside the queue");
    if (!seen.insert(h).second) fail("a head handed back twice");
  }
  // Resubmit them as the blk queue does, completing some.
  Chain c;
  unsigned k = 0;
  for (uint16_t h : heads) {
    auto r = q.pop_head(h, c);
    if (!r.ok()) break;  // broken: the queue's answer
    if (!r.value()) continue;
    if ((ops >> (k++ & 7)) & 1) {
      t.pre_put(c.head());
      q.push(c.head(), 0);
    }
  }
  (void)q.flush();
  t.set_used_idx(q.used_idx());
  (void)q.stop();
  q.reset();
  return 0;
}
