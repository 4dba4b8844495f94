// libFuzzer target: the virtio-pci capability list of a config space a
// device (or something pretending to be one) presents. The parser must never
// read outside the 256 bytes, never loop, and whatever it accepts must name
// windows inside config-space-described BARs (bar <= 5) with a common window
// long enough for every register we touch.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vfio/virtio_pci.h"

using namespace sluice::vfio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Exactly 256 bytes (short inputs padded with zeroes), in a buffer of that
  // size so that ASan sees any read past it.
  std::vector<uint8_t> cfg(256, 0);
  std::memcpy(cfg.data(), data, size < 256 ? size : 256);
  auto caps = parse_virtio_pci_caps(cfg);
  if (!caps.ok()) return 0;
  const VirtioPciCaps& c = caps.value();
  if (!c.common.present || !c.notify.present || c.common.length < 56) std::abort();
  for (const VirtioCapRef* r : {&c.common, &c.notify, &c.isr, &c.device})
    if (r->present && r->bar > 5) std::abort();
  if (c.msix && (c.msix_table_size == 0 || c.msix_table_size > 2048)) std::abort();
  return 0;
}
