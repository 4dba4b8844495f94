#include "tests/support/vhost_frontend.h"

#include <unistd.h>

#include <cstring>

namespace sluice::test {

Frontend::Table Frontend::mem_table_of(const MockGuest& g) {
  Table t;
  auto table = g.table();
  vhost::MemTableHeader h{static_cast<uint32_t>(table->regions().size()), 0};
  t.payload.resize(sizeof h + h.nregions * sizeof(vhost::MemRegion));
  std::memcpy(t.payload.data(), &h, sizeof h);
  size_t off = sizeof h;
  for (const GuestRegion& r : table->regions()) {
    vhost::MemRegion m{r.guest_phys, r.size, r.user_addr, r.backing->mmap_offset};
    std::memcpy(t.payload.data() + off, &m, sizeof m);
    off += sizeof m;
    t.fds.emplace_back(::dup(r.backing->fd.get()));
  }
  return t;
}

uint64_t Frontend::uva_of(const MockGuest& g, uint64_t gpa) {
  for (const GuestRegion& r : g.table()->regions())
    if (r.contains_gpa(gpa)) return r.user_addr + (gpa - r.guest_phys);
  std::abort();
}

}  // namespace sluice::test
