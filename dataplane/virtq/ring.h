// Split virtqueue wire format (virtio 1.2, section 2.7) and the feature bits
// the queue engine understands. Plain structs with size asserts; ring fields are
// accessed through std::atomic_ref by the code that owns the access, never by
// overlaying C++ objects on shared memory (STYLE.md "Avoid").
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>

namespace sluice::virtq {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian; a big-endian host needs byte swaps");

// Feature bits (virtio 1.2, section 6).
inline constexpr unsigned kFIndirectDesc = 28;  // VIRTIO_RING_F_INDIRECT_DESC
inline constexpr unsigned kFEventIdx = 29;      // VIRTIO_RING_F_EVENT_IDX
inline constexpr unsigned kFVersion1 = 32;      // VIRTIO_F_VERSION_1
inline constexpr unsigned kFInOrder = 35;       // VIRTIO_F_IN_ORDER

// Descriptor flags (2.7.5).
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
// avail->flags (2.7.6) and used->flags (2.7.8).
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;

inline constexpr uint16_t kMaxQueueSize = 32768;  // 2.7: split queue size limit

// struct virtq_desc (2.7.5).
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

// struct virtq_used_elem (2.7.8).
struct UsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(UsedElem) == 8);

// Byte sizes and offsets of the three areas for a queue of n entries, with the
// event fields (used_event / avail_event) that EVENT_IDX adds.
inline constexpr uint64_t desc_table_bytes(uint32_t n) { return 16ull * n; }
inline constexpr uint64_t avail_ring_bytes(uint32_t n) { return 6ull + 2ull * n; }
inline constexpr uint64_t used_ring_bytes(uint32_t n) { return 6ull + 8ull * n; }
// Offsets inside the avail area: flags 0, idx 2, ring[i] 4+2i, used_event 4+2n.
inline constexpr uint64_t kAvailIdxOff = 2;
inline constexpr uint64_t avail_entry_off(uint32_t i) { return 4ull + 2ull * i; }
// Offsets inside the used area: flags 0, idx 2, ring[i] 4+8i, avail_event 4+8n.
inline constexpr uint64_t kUsedIdxOff = 2;
inline constexpr uint64_t used_entry_off(uint32_t i) { return 4ull + 8ull * i; }

// virtio 1.2 2.7.7.2 / 2.7.10: the event index test. True when new_idx has
// moved past event since old_idx, all in 16-bit wrapping arithmetic.
inline constexpr bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

// Access helpers for shared ring memory. SAFETY: callers guarantee p points
// into a mapped guest region, aligned for T (ring areas are alignment-checked
// when the queue starts).
template <class T>
inline T load_acquire(const std::byte* p) {
  return std::atomic_ref<T>(*reinterpret_cast<T*>(const_cast<std::byte*>(p)))
      .load(std::memory_order_acquire);
}
template <class T>
inline T load_relaxed(const std::byte* p) {
  return std::atomic_ref<T>(*reinterpret_cast<T*>(const_cast<std::byte*>(p)))
      .load(std::memory_order_relaxed);
}
template <class T>
inline void store_release(std::byte* p, T v) {
  std::atomic_ref<T>(*reinterpret_cast<T*>(p)).store(v, std::memory_order_release);
}
template <class T>
inline void store_relaxed(std::byte* p, T v) {
  std::atomic_ref<T>(*reinterpret_cast<T*>(p)).store(v, std::memory_order_relaxed);
}

// Writes a used element, storing only the words that differ from what the
// slot already holds. A driver that recycles its descriptors in ring order
// gets the same element in a slot lap after lap; a line we do not write
// stays valid in the driver's cache, so its read of the element is a hit
// instead of a transfer from ours. The driver never writes the used ring, so
// the load usually hits our own copy.
inline void store_used_elem(std::byte* e, uint32_t id, uint32_t len) {
  if (load_relaxed<uint32_t>(e) != id) store_relaxed<uint32_t>(e, id);
  if (load_relaxed<uint32_t>(e + 4) != len) store_relaxed<uint32_t>(e + 4, len);
}

// Reads a descriptor of the (16-byte aligned) descriptor table exactly once:
// two relaxed 64-bit loads, so no field can be re-read later.
inline Desc read_table_desc(const std::byte* p) {
  uint64_t addr = load_relaxed<uint64_t>(p);
  uint64_t w = load_relaxed<uint64_t>(p + 8);
  return Desc{addr, static_cast<uint32_t>(w), static_cast<uint16_t>(w >> 32),
              static_cast<uint16_t>(w >> 48)};
}

// Reads a descriptor exactly once: the guest may rewrite it concurrently, so
// every check and use must see the same copy. The empty asm with the copy as
// an in/out memory operand stops the compiler from re-reading guest memory in
// place of the local copy. memcpy because indirect tables need not be aligned.
inline Desc read_desc(const std::byte* p) {
  Desc d;
  std::memcpy(&d, p, sizeof d);
  asm volatile("" : "+m"(d));
  return d;
}

}  // namespace sluice::virtq
