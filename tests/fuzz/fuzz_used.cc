// libFuzzer target: the driver side of a split ring against a hostile device.
// A device behind VFIO writes the used ring; the driver must never hand back
// a buffer that is not outstanding, nor the same buffer twice, whatever the
// device writes. The input picks features, how many chains are outstanding,
// then supplies the used ring's contents and index.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dataplane/virtq/split_driver.h"
#include "tests/support/mock_guest.h"

using namespace sluice;
using namespace sluice::virtq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  // One driver per (in_order, size) pair, made once and reset per input.
  static test::MockGuest* guest = new test::MockGuest({{0x100000, 32u << 20}});
  static test::MockDriver* drivers[2][6] = {};
  bool in_order = data[0] & 1;
  unsigned log2 = 1 + (data[0] >> 1) % 6;
  auto qsize = static_cast<uint16_t>(1u << log2);  // 2..64
  test::MockDriver*& slot = drivers[in_order][log2 - 1];
  if (slot == nullptr)
    slot = new test::MockDriver(*guest, test::QueueLayout{.size = qsize, .in_order = in_order});
  test::MockDriver& drv = *slot;
  drv.reset();
  // Make some chains outstanding, 1..3 descriptors each.
  unsigned want = data[1] % (qsize + 1u);
  std::vector<uint8_t> outstanding(qsize, 0);
  for (unsigned i = 0; i < want; ++i) {
    uint32_t nd = 1 + (data[2] >> (i % 7)) % 3;
    if (drv.ring().free_descs() < nd) break;
    std::vector<uint32_t> rd(nd - 1, 8);
    const uint32_t wr[] = {16};
    uint16_t h = drv.add_chain(rd, wr, false, 0, i);
    outstanding[h] = 1;
  }
  drv.ring().publish();
  data += 3;
  size -= 3;
  // The device's writes: the used ring elements, then the used index.
  std::byte* used = drv.ring().used_area();
  size_t ring = used_ring_bytes(qsize) - 4;  // elements + avail_event
  size_t n = size < ring ? size : ring;
  std::memcpy(used + 4, data, n);
  uint16_t idx = 0;
  if (size > n + 1) idx = static_cast<uint16_t>(data[n] | data[n + 1] << 8);
  store_release<uint16_t>(used + kUsedIdxOff, idx);
  UsedBuf u{};
  for (int i = 0; i < 4 * qsize + 4; ++i) {
    auto g = drv.ring().get_used(u);
    if (!g.ok() || !g.value()) break;
    if (u.head >= qsize || !outstanding[u.head]) {
      std::fprintf(stderr, "driver returned head %u that was not outstanding\n", u.head);
      std::abort();
    }
    outstanding[u.head] = 0;
  }
  return 0;
}
