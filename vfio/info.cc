#include "vfio/info.h"

#include <linux/vfio.h>

#include <cstring>

namespace sluice::vfio {

namespace {

template <class T>
T read_at(std::span<const std::byte> buf, size_t off) {
  T v;
  std::memcpy(&v, buf.data() + off, sizeof v);
  return v;
}

Status parse_iova_ranges(std::span<const std::byte> buf, size_t off, size_t cap_end,
                         IommuInfo& info) {
  constexpr size_t kHead = sizeof(vfio_iommu_type1_info_cap_iova_range);
  if (cap_end - off < kHead) return Errc::kVfioInfoMalformed;
  auto nr = read_at<uint32_t>(buf, off + offsetof(vfio_iommu_type1_info_cap_iova_range, nr_iovas));
  if (nr == 0 || nr > (cap_end - off - kHead) / sizeof(vfio_iova_range))
    return Errc::kVfioInfoMalformed;
  info.ranges.clear();
  for (uint32_t i = 0; i < nr; ++i) {
    auto r = read_at<vfio_iova_range>(buf, off + kHead + i * sizeof(vfio_iova_range));
    if (r.start > r.end) return Errc::kVfioInfoMalformed;
    // Sorted and disjoint, as the kernel builds them; anything else is not
    // something we can plan against.
    if (!info.ranges.empty() && r.start <= info.ranges.back().last) return Errc::kVfioInfoMalformed;
    info.ranges.push_back(IovaRange{r.start, r.end});
  }
  return {};
}

}  // namespace

Result<IommuInfo> parse_iommu_info(std::span<const std::byte> buf) {
  // The fields before cap_offset are the original (pre-capability) struct.
  constexpr size_t kBase = offsetof(vfio_iommu_type1_info, cap_offset);
  if (buf.size() < kBase || buf.size() > kMaxInfoBytes) return Errc::kVfioInfoMalformed;
  auto argsz = read_at<uint32_t>(buf, offsetof(vfio_iommu_type1_info, argsz));
  auto flags = read_at<uint32_t>(buf, offsetof(vfio_iommu_type1_info, flags));
  // argsz is what the kernel needs; the caller grows the buffer until it fits.
  if (argsz < kBase || argsz > buf.size()) return Errc::kVfioInfoMalformed;
  buf = buf.first(argsz);

  IommuInfo info;
  if (!(flags & VFIO_IOMMU_INFO_PGSIZES)) return Errc::kVfioInfoMalformed;
  info.iova_pgsizes = read_at<uint64_t>(buf, offsetof(vfio_iommu_type1_info, iova_pgsizes));
  if (info.iova_pgsizes == 0) return Errc::kVfioInfoMalformed;

  bool seen_ranges = false, seen_avail = false, seen_migration = false;
  if ((flags & VFIO_IOMMU_INFO_CAPS) && buf.size() >= sizeof(vfio_iommu_type1_info)) {
    size_t off = read_at<uint32_t>(buf, offsetof(vfio_iommu_type1_info, cap_offset));
    size_t prev = 0;
    unsigned count = 0;
    while (off != 0) {
      // Forward only (no loops), inside the buffer, 4-byte aligned headers.
      if (off < sizeof(vfio_iommu_type1_info) || off <= prev || off % 4 != 0 ||
          off > buf.size() || buf.size() - off < sizeof(vfio_info_cap_header) ||
          ++count > kMaxInfoCaps)
        return Errc::kVfioInfoMalformed;
      auto hdr = read_at<vfio_info_cap_header>(buf, off);
      // A capability ends where the next begins, or at the end of the buffer.
      size_t cap_end = hdr.next == 0 ? buf.size() : hdr.next;
      if (hdr.next != 0 && (hdr.next <= off || hdr.next > buf.size())) return Errc::kVfioInfoMalformed;
      switch (hdr.id) {
        case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
          if (seen_ranges) return Errc::kVfioInfoMalformed;
          seen_ranges = true;
          if (Status s = parse_iova_ranges(buf, off, cap_end, info); !s.ok()) return s.error();
          break;
        case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
          if (seen_avail || cap_end - off < sizeof(vfio_iommu_type1_info_dma_avail))
            return Errc::kVfioInfoMalformed;
          seen_avail = true;
          info.dma_avail = read_at<vfio_iommu_type1_info_dma_avail>(buf, off).avail;
          break;
        case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: {
          if (seen_migration || cap_end - off < sizeof(vfio_iommu_type1_info_cap_migration))
            return Errc::kVfioInfoMalformed;
          seen_migration = true;
          auto m = read_at<vfio_iommu_type1_info_cap_migration>(buf, off);
          info.migration = MigrationCap{m.flags, m.pgsize_bitmap, m.max_dirty_bitmap_size};
          break;
        }
        default:
          break;  // a capability we do not know: skipped
      }
      prev = off;
      off = hdr.next;
    }
  }
  if (!seen_ranges) info.ranges = {IovaRange{0, UINT64_MAX}};
  return info;
}

}  // namespace sluice::vfio
