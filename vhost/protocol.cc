#include "vhost/protocol.h"

#include <array>
#include <cstring>
#include <iterator>

namespace sluice::vhost {

namespace {

enum class Size : uint8_t { kNone, kU64, kState, kAddr, kMemTable, kSingleRegion, kConfig, kInflight };

struct Rule {
  bool known = false;
  Size size = Size::kNone;
  uint8_t min_fds = 0;
  uint8_t max_fds = 0;
  int gate = -1;  // protocol feature bit required, or -1
  bool reply = false;
};

// The constexpr table of stage-one rules, one row per request we implement.
// Requests for features we never offer (logging, postcopy, crypto, IOTLB,
// backend channel, in-band notifications) are unknown to us and refused.
constexpr Rule make(Size s, uint8_t min_fds, uint8_t max_fds, int gate, bool reply) {
  return Rule{true, s, min_fds, max_fds, gate, reply};
}
constexpr auto kRules = [] {
  std::array<Rule, static_cast<size_t>(Request::kMax)> r{};
  auto at = [&](Request q) -> Rule& { return r[static_cast<size_t>(q)]; };
  at(Request::kGetFeatures) = make(Size::kNone, 0, 0, -1, true);
  at(Request::kSetFeatures) = make(Size::kU64, 0, 0, -1, false);
  at(Request::kSetOwner) = make(Size::kNone, 0, 0, -1, false);
  at(Request::kResetOwner) = make(Size::kNone, 0, 0, -1, false);
  at(Request::kSetMemTable) = make(Size::kMemTable, 0, kMaxMemTableRegions, -1, false);
  at(Request::kSetVringNum) = make(Size::kState, 0, 0, -1, false);
  at(Request::kSetVringAddr) = make(Size::kAddr, 0, 0, -1, false);
  at(Request::kSetVringBase) = make(Size::kState, 0, 0, -1, false);
  at(Request::kGetVringBase) = make(Size::kState, 0, 0, -1, true);
  at(Request::kSetVringKick) = make(Size::kU64, 0, 1, -1, false);
  at(Request::kSetVringCall) = make(Size::kU64, 0, 1, -1, false);
  at(Request::kSetVringErr) = make(Size::kU64, 0, 1, -1, false);
  at(Request::kGetProtocolFeatures) = make(Size::kNone, 0, 0, -1, true);
  at(Request::kSetProtocolFeatures) = make(Size::kU64, 0, 0, -1, false);
  at(Request::kGetQueueNum) = make(Size::kNone, 0, 0, kPfMq, true);
  at(Request::kSetVringEnable) = make(Size::kState, 0, 0, -1, false);
  at(Request::kGetConfig) = make(Size::kConfig, 0, 0, kPfConfig, true);
  at(Request::kSetConfig) = make(Size::kConfig, 0, 0, kPfConfig, false);
  at(Request::kGetInflightFd) = make(Size::kInflight, 0, 0, kPfInflightShmfd, true);
  at(Request::kSetInflightFd) = make(Size::kInflight, 1, 1, kPfInflightShmfd, false);
  at(Request::kResetDevice) = make(Size::kNone, 0, 0, kPfResetDevice, false);
  at(Request::kGetMaxMemSlots) = make(Size::kNone, 0, 0, kPfConfigureMemSlots, true);
  at(Request::kAddMemReg) = make(Size::kSingleRegion, 1, 1, kPfConfigureMemSlots, false);
  // QEMU sends the region's fd along with REM_MEM_REG; others may not.
  at(Request::kRemMemReg) = make(Size::kSingleRegion, 0, 1, kPfConfigureMemSlots, false);
  at(Request::kSetStatus) = make(Size::kU64, 0, 0, kPfStatus, false);
  at(Request::kGetStatus) = make(Size::kNone, 0, 0, kPfStatus, true);
  return r;
}();

constexpr const char* kNames[] = {
    "NONE", "GET_FEATURES", "SET_FEATURES", "SET_OWNER", "RESET_OWNER", "SET_MEM_TABLE",
    "SET_LOG_BASE", "SET_LOG_FD", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE",
    "GET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_VRING_ENABLE",
    "SEND_RARP", "NET_SET_MTU", "SET_BACKEND_REQ_FD", "IOTLB_MSG", "SET_VRING_ENDIAN",
    "GET_CONFIG", "SET_CONFIG", "CREATE_CRYPTO_SESSION", "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_END", "GET_INFLIGHT_FD", "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET", "RESET_DEVICE", "VRING_KICK", "GET_MAX_MEM_SLOTS", "ADD_MEM_REG",
    "REM_MEM_REG", "SET_STATUS", "GET_STATUS"};
static_assert(std::size(kNames) == static_cast<size_t>(Request::kMax));

}  // namespace

std::string_view request_name(uint32_t request) noexcept {
  if (request < std::size(kNames)) return kNames[request];
  return "UNKNOWN";
}

bool has_reply(Request r) noexcept {
  auto i = static_cast<size_t>(r);
  return i < kRules.size() && kRules[i].reply;
}

Status check_message(const MsgHeader& h, const uint8_t* payload, size_t nfds,
                     uint64_t protocol_features) noexcept {
  if ((h.flags & kVersionMask) != kVersion || (h.flags & kFlagReply)) return Errc::kMsgBadVersion;
  if (h.size > kMaxPayload) return Errc::kMsgTooLarge;
  if (h.request >= kRules.size() || !kRules[h.request].known) return Errc::kMsgUnknownRequest;
  const Rule& r = kRules[h.request];
  if (r.gate >= 0 && !((protocol_features >> r.gate) & 1)) return Errc::kMsgNotNegotiated;
  size_t want = 0;
  switch (r.size) {
    case Size::kNone: want = 0; break;
    case Size::kU64: want = 8; break;
    case Size::kState: want = sizeof(VringState); break;
    case Size::kAddr: want = sizeof(VringAddr); break;
    case Size::kSingleRegion: want = sizeof(SingleMemRegion); break;
    case Size::kInflight: want = sizeof(Inflight); break;
    case Size::kMemTable: {
      if (h.size < sizeof(MemTableHeader)) return Errc::kMsgBadSize;
      MemTableHeader m;
      std::memcpy(&m, payload, sizeof m);
      if (m.nregions > kMaxMemTableRegions) return Errc::kMsgBadSize;
      // QEMU sends the whole fixed array; others send only nregions entries.
      size_t exact = sizeof m + size_t{m.nregions} * sizeof(MemRegion);
      size_t full = sizeof m + size_t{kMaxMemTableRegions} * sizeof(MemRegion);
      if (h.size != exact && h.size != full) return Errc::kMsgBadSize;
      if (nfds != m.nregions) return Errc::kMsgBadFdCount;
      return {};
    }
    case Size::kConfig: {
      if (h.size < sizeof(ConfigHeader)) return Errc::kMsgBadSize;
      ConfigHeader c;
      std::memcpy(&c, payload, sizeof c);
      if (c.size > kMaxConfigSize || h.size != sizeof c + c.size) return Errc::kMsgBadSize;
      want = h.size;
      break;
    }
  }
  if (h.size != want) return Errc::kMsgBadSize;
  if (nfds < r.min_fds || nfds > r.max_fds) return Errc::kMsgBadFdCount;
  if (r.size == Size::kU64 && r.max_fds == 1) {
    // KICK/CALL/ERR: an fd exactly when the no-fd flag is clear.
    uint64_t v;
    std::memcpy(&v, payload, sizeof v);
    if (((v & kVringNoFdFlag) != 0) != (nfds == 0)) return Errc::kMsgBadFdCount;
  }
  return {};
}

}  // namespace sluice::vhost
