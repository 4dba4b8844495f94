// A learning L2 switch inside the data plane (docs/ARCHITECTURE.md, "net").
//
// Every port of a switch — vhost-user-net devices, DPDK uplinks — is served by
// the switch's one worker, so a frame goes from the sender's transmit ring
// straight into the receiver's receive buffers (one copy) with no lock and no
// queue in between. Scale out with more switches (each on its own worker).
//
// The MAC table is written only by that worker (learning on every frame,
// aging by timestamp, a sweep of aged entries once a second) and read by the
// control plane for display; the port table is written only by the control
// thread, which waits for the worker's next burst before a removed port may
// be destroyed.
//
// Port security (docs/SECURITY.md, "The switch"): a locked port sends only
// with its own MAC, and no other port may use that MAC; each port learns at
// most its `max_macs` source MACs and can replace only its own or aged
// entries, never another port's; a port's flooded frames (broadcast,
// multicast, unknown unicast) pass a token bucket. Every refusal is counted
// on the port with its reason.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/net/virtio_net.h"
#include "dataplane/worker/worker.h"

namespace sluice {
class MemoryTable;
}

namespace sluice::net {

// Why a frame was dropped: counted per port.
enum class Drop : uint8_t {
  kShortHeader,  // transmitted buffer shorter than the vnet header
  kRunt,         // frame shorter than an Ethernet header
  kOversize,     // frame longer than the port's MTU allows
  kBadCsum,      // NEEDS_CSUM with a checksum position outside the frame
  kNoRxBuffer,   // the receiver had no (or not enough) buffers posted
  kRxTooSmall,   // a receive buffer too small for the frame (no MRG_RXBUF)
  kRxBadChain,   // a receive chain with no writable part, or no room for the header
  kRxNotReady,   // the receiver's queue is not running
  kFiltered,     // the receiver's rx filter (promisc/MAC table) refused it
  kUplinkFull,   // the uplink's transmit queue was full
  kGuestFault,   // sender's or receiver's guest memory faulted (now, or a poisoned page)
  kSrcMacLocked, // a locked port sent with a source MAC other than its own
  kSrcMacOwned,  // the source MAC is another (locked) port's
  kFloodLimit,   // the port's flooded frames went past its flood rate
  kCount,
};
inline constexpr unsigned kDropKinds = static_cast<unsigned>(Drop::kCount);
const char* drop_name(Drop d);

// Per-port counters, named from the port's far side (a guest's view, as in
// `ip -s link` inside it): tx = frames the port sent into the switch, rx =
// frames the switch handed to it. Single writer (the switch's worker).
struct PortStats {
  std::atomic<uint64_t> tx_packets{0}, tx_bytes{0}, rx_packets{0}, rx_bytes{0};
  std::atomic<uint64_t> drops[kDropKinds] = {};
  // Source MACs not learned (the frame itself still forwarded): the port
  // had learned its max_macs already, or every entry where the MAC would go
  // belongs to another port and is fresh.
  std::atomic<uint64_t> learn_port_limit{0}, learn_table_full{0};
  static void add(std::atomic<uint64_t>& c, uint64_t n) noexcept {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void drop(Drop d) noexcept { add(drops[static_cast<unsigned>(d)], 1); }
  uint64_t dropped(Drop d) const noexcept {
    return drops[static_cast<unsigned>(d)].load(std::memory_order_relaxed);
  }
};

// A frame on its way through the switch. The bytes stay in the sender's
// buffers; the first 14 (the Ethernet header) travel in `eth`, so a port can
// rewrite them (reflect swaps the MACs) without touching the sender's memory.
struct Packet {
  const iovec* iov = nullptr;
  uint32_t niov = 0;
  uint32_t offset = 0;  // bytes in iov before the frame (the sender's vnet header)
  uint32_t len = 0;     // frame bytes, Ethernet header included
  uint8_t eth[kEthHdrLen] = {};
  // The sender left the checksum to the device (NEEDS_CSUM): a receiver that
  // can take a partial checksum gets these fields; any other gets the frame
  // with `csum` written at csum_start + csum_offset.
  bool needs_csum = false;
  uint16_t csum_start = 0, csum_offset = 0;
  uint16_t csum = 0;     // network byte order, as stored in the frame
  bool data_valid = false;
  // The sender's guest memory (null: not a guest's, e.g. an uplink's mbuf):
  // a receiver that meets a fault copying the frame records it there.
  const MemoryTable* src_mem = nullptr;
  // Set by the first receiver that met a fault copying the frame: every
  // other receiver of a flooded frame drops it too (the fault replaced the
  // page, so their copies would not fault).
  mutable bool faulted = false;

  uint64_t dst() const noexcept;  // 48-bit MACs, first byte in the high bits
  uint64_t src() const noexcept;
  // Copies frame bytes [from, from+n) out of the sender's buffers, with the
  // (possibly rewritten) Ethernet header, and with the finished checksum
  // when finish_csum. Returns bytes copied.
  uint32_t copy_out(uint32_t from, void* dst, uint32_t n, bool finish_csum) const noexcept;
};

inline bool is_multicast(uint64_t mac) noexcept { return (mac >> 40) & 1; }
std::string format_mac(uint64_t mac);
// "52:54:00:12:34:56" -> 48-bit value; false when malformed.
bool parse_mac(const std::string& s, uint64_t& out);

// What a port may do on its switch. Set before the port joins (add_port
// copies it); fixed while the port is on the switch.
struct PortSecurity {
  uint64_t locked_mac = 0;  // nonzero: the only source MAC the port may send with, and no other port's
  uint32_t max_macs = 64;   // source MACs the switch learns on the port at most
  uint32_t flood_rate = 0;  // frames per second it may flood, bursts of flood_burst(); 0: unlimited
  // Bucket depth: a tenth of a second's worth, at least 16 frames (a guest's
  // ARP/ND/DHCP burst at boot).
  uint64_t flood_burst() const noexcept { return flood_rate / 10 > 16 ? flood_rate / 10 : 16; }
};

class SwitchPort {
 public:
  explicit SwitchPort(std::string name) : name_(std::move(name)) {}
  virtual ~SwitchPort() = default;
  // Switch's worker: hand one frame to this port (qp: the sender's queue
  // pair, a spreading hint for multi-queue receivers).
  virtual void deliver(const Packet& p, uint16_t qp) = 0;
  // Whether a flooded frame for `dst` is wanted (the port's rx filter).
  virtual bool accepts(uint64_t /*dst*/) const { return true; }
  virtual const char* kind() const = 0;
  const std::string& name() const noexcept { return name_; }
  PortStats& stats() noexcept { return stats_; }
  const PortStats& stats() const noexcept { return stats_; }
  // Set by the switch when the port joins: its slot in the port table.
  uint16_t slot() const noexcept { return slot_; }
  // Control thread, before the port joins a switch.
  void set_security(const PortSecurity& s) noexcept { sec_ = s; }
  const PortSecurity& security() const noexcept { return sec_; }

 private:
  friend class Switch;
  std::string name_;
  PortStats stats_;
  uint16_t slot_ = 0;
  PortSecurity sec_;
  // The flood bucket (switch's worker): tokens in units of 1e-9 frame, so
  // a refill is (ns elapsed) * rate with no division.
  uint64_t flood_tokens_ = 0, flood_at_ = 0;
};

struct MacEntry {
  uint64_t mac = 0;
  std::string port;
  double age_s = 0;
};

class Switch {
 public:
  static constexpr unsigned kMaxPorts = 255;
  static constexpr unsigned kMacBuckets = 4096;  // power of two
  static constexpr unsigned kMacProbe = 8;       // linear probe length

  Switch(std::string name, Worker& worker, uint64_t aging_s = 300);
  Switch(const Switch&) = delete;
  Switch& operator=(const Switch&) = delete;

  const std::string& name() const noexcept { return name_; }
  Worker& worker() noexcept { return worker_; }
  // Source MACs learned on the port now (entries not yet aged out and swept).
  uint32_t macs_learned(const SwitchPort& p) const noexcept {
    return p.slot_ == 0 ? 0 : nmacs_[p.slot_].load(std::memory_order_relaxed);
  }
  uint64_t aging_s() const noexcept { return aging_ns_ / 1000000000ull; }

  // Control thread. add_port fails when the switch is full; after
  // remove_port returns the worker no longer touches the port.
  Status add_port(SwitchPort& p);
  void remove_port(SwitchPort& p);
  std::vector<SwitchPort*> ports() const;
  std::vector<MacEntry> mac_table() const;
  // Counters of the switch itself.
  uint64_t flooded() const noexcept { return flooded_.load(std::memory_order_relaxed); }
  uint64_t learned() const noexcept { return learned_.load(std::memory_order_relaxed); }

  // Worker: check the sender's source MAC against the ports' locks, learn
  // it on `from`, then deliver to the port that owns the destination, or
  // flood (broadcast, multicast, unknown, aged) within `from`'s flood rate.
  void forward(SwitchPort& from, const Packet& p, uint16_t qp, uint64_t now_ns) noexcept;

  static uint64_t now_ns() noexcept;

 private:
  struct Entry {
    // mac | slot << 48 | generation << 56; 0 = empty.
    std::atomic<uint64_t> key{0};
    std::atomic<uint64_t> seen{0};  // ns
  };
  static constexpr uint64_t kSweepNs = 1000000000ull;
  enum class Learn : uint8_t { kOk, kOwned, kPortLimit, kTableFull };
  // The hit (a MAC known on its port) is the fast path; a move or a new MAC
  // goes out of line.
  Learn learn(uint64_t mac, uint16_t slot, uint64_t now) noexcept;
  [[gnu::noinline]] Learn learn_move(Entry& e, uint64_t key, uint64_t now) noexcept;
  [[gnu::noinline]] Learn learn_new(uint64_t key, uint32_t h, uint64_t now) noexcept;
  SwitchPort* lookup(uint64_t mac, uint64_t now) noexcept;
  [[gnu::noinline]] SwitchPort* lookup_locked(uint64_t mac, uint64_t now) noexcept;
  // The slot of the live locked port whose MAC this is, or 0 (a scan of the
  // port table: only on a miss, a move or a new MAC).
  uint16_t locked_owner(uint64_t mac) const noexcept;
  // Whether an entry's port still owns it (its generation is current).
  bool live(uint64_t key) const noexcept;
  // The flood bucket of a port with a flood rate (nonzero).
  bool flood_ok(SwitchPort& from, uint64_t now) noexcept;
  // Worker: clears aged and stale entries, once a second at most.
  void sweep(uint64_t now) noexcept;
  void release(uint64_t key) noexcept;
  static uint32_t hash(uint64_t mac) noexcept;

  std::string name_;
  Worker& worker_;
  uint64_t aging_ns_;
  std::array<std::atomic<SwitchPort*>, kMaxPorts + 1> ports_{};  // slot 0 unused
  std::array<uint8_t, kMaxPorts + 1> gen_{};                      // control thread; copied into port_gen_
  std::array<std::atomic<uint8_t>, kMaxPorts + 1> port_gen_{};
  std::atomic<uint16_t> top_{0};  // highest slot in use
  std::array<std::atomic<uint64_t>, kMaxPorts + 1> lock_mac_{};  // control thread; 0: unlocked
  std::array<std::atomic<uint32_t>, kMaxPorts + 1> nmacs_{};     // worker (reset by add_port)
  std::vector<Entry> macs_;
  uint64_t sweep_at_ = 0;  // worker
  std::atomic<uint64_t> flooded_{0}, learned_{0};
};

}  // namespace sluice::net
