// Result<T>: a value or a named error. Used across dataplane/, vhost/ and vfio/
// instead of exceptions (STYLE.md rule 7).
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace sluice {

// Every error the lower layers can report, by name. Grouped by subsystem; the
// name is what logs, tests and the management API show.
enum class Errc : uint16_t {
  kOk = 0,
  // generic / system
  kSystem,            // a syscall failed; errno is carried in Error::sys_errno
  kInvalidArgument,
  // guest memory (dataplane/memory)
  kRegionZeroSize,
  kRegionOverlap,
  kRegionPastEndOfFile,
  kRegionAddressOverflow,
  kRegionBadFd,
  kRegionNotFound,
  kTooManyRegions,
  kMemoryLimit,      // the regions add up to more than the export allows
  kAddressNotMapped,  // a guest range is not (fully) inside any region
  // virtqueue configuration
  kQueueBadSize,
  kQueueMisaligned,
  kQueueRingNotContiguous,
  kQueueNotReady,
  kQueueBroken,
  kGuestMemoryFault,     // an access to guest memory faulted (SIGBUS: no page, hardware poison)
  kGuestMemoryPoisoned,  // a request touches a page that faulted before
  // virtqueue: guest-controlled values (each marks the queue broken)
  kAvailIndexTooFar,     // avail idx more than queue size ahead of last_avail
  kHeadOutOfRange,       // avail ring entry >= queue size
  kNextOutOfRange,       // desc.next >= queue size
  kChainTooLong,         // more descriptors than the queue size (a loop)
  kIndirectBadLength,    // indirect table len not a non-zero multiple of 16
  kIndirectTooLong,      // indirect table longer than the bound
  kIndirectNested,       // INDIRECT inside an indirect table
  kIndirectWithNext,     // INDIRECT together with NEXT in one descriptor
  kIndirectNotNegotiated,
  kDescAddressOverflow,  // addr + len wraps 64 bits
  kDescNotMapped,        // buffer outside guest memory
  kReadableAfterWritable,// a device-readable descriptor after a writable one
  kChainTooManySegments, // more host segments than the chain can carry
  kChainTooLarge,        // total length above 4 GiB (virtio 1.2 2.7.5)
  kUsedIdOutOfRange,     // driver side: a used id that names no buffer
  kUsedOutOfOrder,       // driver side: an in-order batch id out of order
  kUsedIndexTooFar,      // driver side: used idx ran past what was made available
  kQueueFull,            // driver side: no free descriptors
  // vhost-user messages (vhost/)
  kPeerClosed,            // the front-end closed the socket
  kMsgTruncated,          // short read, or fds cut off (MSG_CTRUNC)
  kMsgBadVersion,         // header flags lack version 1, or carry a reply bit
  kMsgTooLarge,           // payload size above the protocol's bound
  kMsgBadSize,            // payload size wrong for the request
  kMsgBadFdCount,         // more or fewer fds than the request allows
  kMsgUnknownRequest,     // a request number we do not implement
  kMsgNotNegotiated,      // a request whose protocol feature was not negotiated
  kFeatureNotOffered,     // SET_FEATURES / SET_PROTOCOL_FEATURES with bits never offered
  kVringIndexOutOfRange,  // queue index >= the device's queue count
  kVringNotConfigured,    // e.g. GET_VRING_BASE of a queue never set up
  kVringAddrNotMapped,    // ring address outside the memory table
  kNotEventFd,            // a kick/call/err fd that is not an eventfd
  kConfigOutOfRange,      // GET/SET_CONFIG window outside config space
  kMacLocked,             // a config write of a MAC other than a locked port's own
  kQueueRunning,          // a change only allowed on a stopped queue
  // virtio-blk requests (dataplane/blk), virtio 1.2 section 5.2.6
  kBlkNoStatus,           // no writable byte for the status: cannot even report
  kBlkShortHeader,        // fewer than 16 readable bytes of header
  kBlkBadDirection,       // data in the wrong direction for the request type
  kBlkUnaligned,          // data length not a multiple of 512
  kBlkOutOfRange,         // sectors past the end of the disk
  kBlkReadOnly,           // a write to a read-only export
  kBlkUnsupported,        // a request type we do not implement
  kBlkBadSegments,        // discard/write-zeroes payload malformed or over the limits
  // VFIO (vfio/)
  kVfioApiVersion,        // VFIO_GET_API_VERSION is not the one we speak
  kVfioNoType1,           // the container offers neither TYPE1v2 nor TYPE1
  kVfioGroupNotViable,    // a device of the group is bound to a host driver
  kVfioInfoMalformed,     // a capability chain that points outside or loops
  kVfioRegionBad,         // no such device region, or an access past its end
  kVfioIrqBad,            // no such interrupt index, or vectors past its count
  kDmaMisaligned,         // vaddr/iova/size not a multiple of the smallest IOMMU page
  kDmaOutsideIovaRanges,  // a range below or above every usable IOVA range
  kDmaLimit,              // the plan needs more mappings than DMA_AVAIL allows
  kDmaOverlap,            // a range overlaps a mapped one without being the same
  kDmaNotMapped,          // an unmap of a range that was never mapped
  // virtio-pci over VFIO (vfio/virtio_pci)
  kVirtioNoCap,           // a required virtio PCI capability is missing or malformed
  kVirtioFeatures,        // no VERSION_1, or the device refused FEATURES_OK
  kVirtioQueueUnavailable,// queue index past num_queues, or a queue of size 0
  kVirtioDeviceFailed,    // the device set NEEDS_RESET/FAILED, or reset never completed
  kVirtioBadUsed,         // the device returned a used buffer that breaks the request
};

std::string_view errc_name(Errc e) noexcept;

// An error: its name, the errno behind it when a syscall failed, and whether a
// peer that caused it may reconnect (a session error) or not.
struct Error {
  Errc code = Errc::kOk;
  int sys_errno = 0;

  constexpr Error() = default;
  constexpr Error(Errc c, int e = 0) : code(c), sys_errno(e) {}  // NOLINT: implicit on purpose
  static Error from_errno(int e) { return Error(Errc::kSystem, e); }
  std::string_view name() const noexcept { return errc_name(code); }
  friend constexpr bool operator==(const Error& a, const Error& b) = default;
  friend constexpr bool operator==(const Error& a, Errc b) { return a.code == b; }
};

// A value constructor takes exactly T (after dropping references and const),
// never something that merely converts to it: `return -1;` in a function
// returning Result<bool> is a compile error, not a silent `true`.
template <class U, class T>
concept ExactlyT = std::is_same_v<std::remove_cvref_t<U>, T>;

// Result<T>: either a T or an Error. Deliberately small: no exceptions, no
// monadic helpers beyond what the code uses.
template <class T>
class [[nodiscard]] Result {
 public:
  template <ExactlyT<T> U>
  Result(U&& v) : v_(std::in_place_index<0>, std::forward<U>(v)) {}  // NOLINT
  Result(Error e) : v_(std::in_place_index<1>, e) {}               // NOLINT
  Result(Errc c) : v_(std::in_place_index<1>, Error(c)) {}         // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Trivially copyable values (bool, integers, pointers): two plain members, so
// a Result on the hot path is returned in registers with no variant machinery.
template <class T>
  requires(std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>)
class [[nodiscard]] Result<T> {
 public:
  template <ExactlyT<T> U>
  Result(U v) : v_(v) {}                // NOLINT
  Result(Error e) : e_(e) {}            // NOLINT
  Result(Errc c) : e_(Error(c)) {}      // NOLINT

  bool ok() const noexcept { return e_.code == Errc::kOk; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() { return v_; }
  const T& value() const { return v_; }
  T* operator->() { return &v_; }
  const T* operator->() const { return &v_; }
  T& operator*() { return v_; }
  const T& operator*() const { return v_; }
  const Error& error() const { return e_; }

 private:
  T v_{};
  Error e_{};
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error e) : e_(e) {}        // NOLINT
  Result(Errc c) : e_(Error(c)) {}  // NOLINT
  bool ok() const noexcept { return e_.code == Errc::kOk; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return e_; }

 private:
  Error e_{};
};

using Status = Result<void>;

}  // namespace sluice

// Propagate an error from an expression returning Result<...>.
#define SLUICE_TRY(expr)                       \
  do {                                         \
    auto sluice_try_r_ = (expr);               \
    if (!sluice_try_r_.ok()) return sluice_try_r_.error(); \
  } while (0)
