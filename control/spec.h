// Export specifications as given on the command line and through the API, in
// the style of qemu-storage-daemon: "id=vm1,path=/run/sluice/vm1.sock,
// file=/srv/vm1.img,queues=2,ro,size=8G".
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace sluice::control {

// What one front-end of an export may map (docs/SECURITY.md): keys
// max-memory=SIZE (default 1T) and max-regions=N (default 509), for blk and
// net exports alike.
struct ExportLimits {
  static constexpr uint64_t kDefaultMaxMemory = 1ull << 40;
  uint64_t max_memory = kDefaultMaxMemory;
  uint32_t max_regions = 509;
  friend bool operator==(const ExportLimits&, const ExportLimits&) = default;
};

struct BlkSpec {
  std::string id;       // defaults to the socket's base name
  std::string path;     // vhost-user socket
  std::string file;     // backing file or block device
  uint16_t queues = 1;
  bool read_only = false;
  uint64_t size = 0;    // create/grow the file to this size (0: use the file as is)
  std::string serial;   // GET_ID; defaults to the id
  uint16_t queue_size = 256;
  bool null_backend = false;  // "null": no file, requests complete at once (needs size)
  bool direct = true;         // use O_DIRECT where the file and the request allow it
  std::string vfio;           // PCI address of a virtio-blk device behind VFIO
  bool offload = false;       // its queues are handed to that device (vDPA-style)
  ExportLimits limits;
  friend bool operator==(const BlkSpec&, const BlkSpec&) = default;
};

// A virtio-net port on a switch: "id=vm1,path=/run/sluice/vm1-net.sock,
// switch=br0,queues=2,mac=52:54:00:12:34:56,mtu=1500,mode=reflect".
struct NetSpec {
  std::string id;
  std::string path;
  std::string sw = "sw0";     // the switch (created when it does not exist)
  uint16_t queues = 1;        // queue pairs
  uint16_t queue_size = 1024;
  uint16_t mtu = 1500;
  uint64_t mac = 0;           // 0: derived from the id (52:54:00:xx:xx:xx)
  std::string mode = "switch";  // switch, reflect, sink, source
  uint32_t frame = 64;        // source: frame bytes
  // Port security (docs/SECURITY.md): mac-lock=on|off, max-macs=N, flood-rate=N.
  bool mac_lock = true;
  uint32_t max_macs = 64;
  uint32_t flood_rate = 10000;  // flooded frames per second; 0: unlimited
  ExportLimits limits;
  friend bool operator==(const NetSpec&, const NetSpec&) = default;
};

// A DPDK ethdev uplink: "switch=br0,dpdk=net_tap0,iface=sl0" (everything
// after dpdk= is the EAL device string).
struct UplinkSpec {
  std::string name;           // defaults to the device's name (devargs up to the first comma)
  std::string sw;
  std::string devargs;
  uint16_t queue_size = 1024;
  uint32_t max_macs = 1024;   // source MACs learned from the wire
  uint32_t flood_rate = 0;    // flooded frames per second; 0: unlimited
  friend bool operator==(const UplinkSpec&, const UplinkSpec&) = default;
};

// Thrown for a malformed spec; what() says which key and why.
struct SpecError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

BlkSpec parse_blk_spec(const std::string& text);
NetSpec parse_net_spec(const std::string& text);
UplinkSpec parse_uplink_spec(const std::string& text);
// A switch name: 1..32 of [A-Za-z0-9_-].
void check_switch_name(const std::string& name);
// "8G", "512M", "4096", "1T" (binary units).
uint64_t parse_size(const std::string& text);
std::string format_size(uint64_t bytes);

}  // namespace sluice::control
