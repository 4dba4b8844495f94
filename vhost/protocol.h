// vhost-user wire format, back-end side (QEMU docs/interop/vhost-user.rst).
//
// Security model: the front-end (a VMM or DPDK virtio-user) is not trusted.
// Every message is checked in two stages before a handler sees it: the
// header and the request's rules (exact payload size, fds allowed, protocol
// feature gating) in check_message(), then the handler's own semantic checks
// (indices, addresses, fds that must be eventfds). A message that fails is
// refused with a named error; the session decides whether that closes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dataplane/base/result.h"

namespace sluice::vhost {

enum class Request : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kMax = 41,
};
std::string_view request_name(uint32_t request) noexcept;

// Header flags.
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 0x4;
inline constexpr uint32_t kFlagNeedReply = 0x8;

// Virtio feature bit that announces protocol features.
inline constexpr unsigned kFProtocolFeatures = 30;

// Protocol feature bits.
enum ProtocolFeature : unsigned {
  kPfMq = 0,
  kPfLogShmfd = 1,
  kPfRarp = 2,
  kPfReplyAck = 3,
  kPfMtu = 4,
  kPfBackendReq = 5,
  kPfCrossEndian = 6,
  kPfCryptoSession = 7,
  kPfPagefault = 8,
  kPfConfig = 9,
  kPfBackendSendFd = 10,
  kPfHostNotifier = 11,
  kPfInflightShmfd = 12,
  kPfResetDevice = 13,
  kPfInbandNotifications = 14,
  kPfConfigureMemSlots = 15,
  kPfStatus = 16,
};

inline constexpr size_t kMaxPayload = 4096;
inline constexpr uint32_t kMaxMemTableRegions = 8;  // SET_MEM_TABLE's fixed array
inline constexpr uint32_t kMaxConfigSize = 256;     // VHOST_USER_MAX_CONFIG_SIZE
inline constexpr unsigned kMaxFds = 8;              // fds one message may carry
// SET_VRING_KICK/CALL/ERR payload: queue index in bits 0-7, "no fd" in bit 8.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdFlag = 0x100;

struct MsgHeader {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes that follow
};
static_assert(sizeof(MsgHeader) == 12);

struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

struct VringAddr {
  uint32_t index;
  uint32_t flags;  // bit 0: VHOST_VRING_F_LOG
  uint64_t desc;   // front-end user addresses (or IOVAs with an IOMMU)
  uint64_t used;
  uint64_t avail;
  uint64_t log;
};
static_assert(sizeof(VringAddr) == 40);

struct MemRegion {
  uint64_t guest_phys;
  uint64_t size;
  uint64_t user_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(MemRegion) == 32);

struct MemTableHeader {
  uint32_t nregions;
  uint32_t padding;
};
static_assert(sizeof(MemTableHeader) == 8);

struct SingleMemRegion {
  uint64_t padding;
  MemRegion region;
};
static_assert(sizeof(SingleMemRegion) == 40);

struct ConfigHeader {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
};
static_assert(sizeof(ConfigHeader) == 12);

struct Inflight {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
  uint32_t padding;  // the C struct's tail padding, sent on the wire
};
static_assert(sizeof(Inflight) == 24);

// Stage one: header sanity and the request's static rules. `protocol_features`
// is what the session has negotiated so far. Returns the error that refuses
// the message, or ok.
Status check_message(const MsgHeader& h, const uint8_t* payload, size_t nfds,
                     uint64_t protocol_features) noexcept;

// Whether the request sends a reply of its own (not a REPLY_ACK).
bool has_reply(Request r) noexcept;

}  // namespace sluice::vhost
