// virtio-net wire formats (virtio 1.2, section 5.1): feature bits, the
// per-packet header, the control-queue commands and the config space.
#pragma once

#include <cstdint>

namespace sluice::net {

// Feature bits (5.1.3).
inline constexpr unsigned kFCsum = 0;          // device handles partial checksums from the driver
inline constexpr unsigned kFGuestCsum = 1;     // driver handles partial checksums from the device
inline constexpr unsigned kFMtu = 3;
inline constexpr unsigned kFMac = 5;
inline constexpr unsigned kFMrgRxbuf = 15;
inline constexpr unsigned kFStatus = 16;
inline constexpr unsigned kFCtrlVq = 17;
inline constexpr unsigned kFCtrlRx = 18;
inline constexpr unsigned kFMq = 22;
inline constexpr unsigned kFCtrlMacAddr = 23;

// struct virtio_net_hdr (5.1.6). 12 bytes with VERSION_1 or MRG_RXBUF, the
// first 10 (no num_buffers) for a legacy driver without MRG_RXBUF.
struct __attribute__((packed)) VnetHdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
  uint16_t num_buffers;
};
static_assert(sizeof(VnetHdr) == 12);
inline constexpr uint8_t kHdrFNeedsCsum = 1;
inline constexpr uint8_t kHdrFDataValid = 2;
inline constexpr uint8_t kGsoNone = 0;

// Control queue (5.1.6.5): class, command, data, then one writable ack byte.
inline constexpr uint8_t kCtrlOk = 0;
inline constexpr uint8_t kCtrlErr = 1;
inline constexpr uint8_t kCtrlRx = 0;
inline constexpr uint8_t kCtrlRxPromisc = 0;
inline constexpr uint8_t kCtrlRxAllmulti = 1;
inline constexpr uint8_t kCtrlMac = 1;
inline constexpr uint8_t kCtrlMacTableSet = 0;
inline constexpr uint8_t kCtrlMacAddrSet = 1;
inline constexpr uint8_t kCtrlMq = 4;
inline constexpr uint8_t kCtrlMqVqPairsSet = 0;
inline constexpr uint16_t kMqPairsMin = 1;
inline constexpr uint16_t kMqPairsMax = 0x8000;

inline constexpr uint16_t kStatusLinkUp = 1;

// struct virtio_net_config up to mtu (5.1.4).
struct __attribute__((packed)) NetConfig {
  uint8_t mac[6];
  uint16_t status;
  uint16_t max_virtqueue_pairs;
  uint16_t mtu;
};
static_assert(sizeof(NetConfig) == 12);

inline constexpr uint32_t kEthHdrLen = 14;

}  // namespace sluice::net
