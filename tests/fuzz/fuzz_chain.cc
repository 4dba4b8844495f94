// libFuzzer target: the device side of a split ring over fuzzed guest memory
// and indices. The input decides the queue's features and size, then is copied
// over the descriptor table, the avail ring and a data area. The target pops
// chains until the ring is empty or broken and checks the one property that
// matters: every host span handed out lies inside a guest region.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dataplane/virtq/split_queue.h"
#include "tests/support/mock_guest.h"

using namespace sluice;
using namespace sluice::virtq;

namespace {

struct World {
  // Two regions with a hole between them, so edges and holes both get hit.
  test::MockGuest guest{{{0x100000, 16u << 20}, {0x1200000, 1u << 20}}};
  test::MockDriver drivers[8] = {
      {guest, {.size = 8, .event_idx = false, .indirect = true, .in_order = false}},
      {guest, {.size = 8, .event_idx = true, .indirect = true, .in_order = true}},
      {guest, {.size = 64, .event_idx = false, .indirect = true, .in_order = false}},
      {guest, {.size = 64, .event_idx = true, .indirect = false, .in_order = true}},
      {guest, {.size = 16, .event_idx = false, .indirect = true, .in_order = true,
               .batching = InOrderBatching::kPerBuffer}},
      {guest, {.size = 16, .event_idx = true, .indirect = false, .in_order = false}},
      {guest, {.size = 1, .event_idx = false, .indirect = true, .in_order = false}},
      {guest, {.size = 256, .event_idx = true, .indirect = true, .in_order = true}},
  };
  uint64_t data = guest.alloc(64 * 1024, 64);
};

World& world() {
  static World* w = new World();
  return *w;
}

bool inside_guest(const MemoryTable& t, const iovec& v) {
  auto* p = static_cast<const std::byte*>(v.iov_base);
  for (const GuestRegion& r : t.regions())
    if (p >= r.host && v.iov_len <= r.size && p - r.host <= static_cast<ptrdiff_t>(r.size - v.iov_len))
      return true;
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  World& w = world();
  test::MockDriver& drv = w.drivers[data[0] % 8];
  uint16_t qsize = drv.layout().size;
  uint16_t base = static_cast<uint16_t>(data[1] | (data[2] << 8));
  uint8_t pushes = data[3];
  data += 4;
  size -= 4;
  // Copy the rest over the descriptor table, avail ring and data area. The
  // fuzzer's descriptor addresses are remapped into the guest a little, so
  // that valid-looking chains are common.
  std::byte* table = drv.ring().desc_table();
  size_t tbytes = desc_table_bytes(qsize);
  size_t n = size < tbytes ? size : tbytes;
  std::memset(table, 0, tbytes);
  std::memcpy(table, data, n);
  for (size_t i = 0; i + 16 <= n; i += 16) {
    uint64_t addr;
    std::memcpy(&addr, table + i, 8);
    if (addr & 1) {  // odd: point it at the data area (or near the hole)
      addr = (addr & 2 ? 0x1100000 - 64 : w.data) + ((addr >> 2) & 0xffff);
      std::memcpy(table + i, &addr, 8);
    }
  }
  data += n;
  size -= n;
  std::byte* avail = drv.ring().avail_area();
  size_t abytes = avail_ring_bytes(qsize);
  size_t m = size < abytes ? size : abytes;
  std::memset(avail, 0, abytes);
  std::memcpy(avail, data, m);
  data += m;
  size -= m;
  w.guest.fill(w.data, 64 * 1024, 0);
  if (size > 0) w.guest.write(w.data, std::as_bytes(std::span(data, size < 65536 ? size : 65536)));

  SplitQueue q;
  if (!q.configure(drv.device_config()).ok() || !q.attach(w.guest.table()).ok()) std::abort();
  q.set_base(base);
  auto table_snapshot = w.guest.table();
  Chain c;
  for (int i = 0; i < 4 * qsize + 4; ++i) {
    auto r = q.pop(c);
    if (!r.ok() || !r.value()) break;
    for (const iovec& v : c.all())
      if (!inside_guest(*table_snapshot, v)) {
        std::fprintf(stderr, "span outside guest memory\n");
        std::abort();
      }
    if (c.table_descs() == 0 || c.table_descs() > qsize) std::abort();
    if ((pushes & 4) && q.in_order()) {
      q.discard(1, c.table_descs());  // give it back; the next pop sees it again
      if (pushes & 8) break;
    } else if (pushes & 1) {
      q.push(c.head(), static_cast<uint32_t>(c.writable_bytes()));
    }
    if (pushes & 2) (void)q.flush();
    pushes = static_cast<uint8_t>(pushes >> 1 | pushes << 7);
  }
  (void)q.stop();
  q.reset();
  return 0;
}
