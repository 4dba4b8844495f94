// virtio-net device model (virtio 1.2, section 5.1) on a Sluice switch.
//
// Queue layout: receiveq N = 2N, transmitq N = 2N+1, controlq = 2 * pairs.
// Each started queue is a Pollable on the switch's worker. A transmitted
// chain is parsed (vnet header, Ethernet header, MTU) and handed to the
// switch, which copies it straight into the receiving port's buffers; the
// transmit buffer is completed in the same burst (IN_ORDER: one used element
// per burst). Receive queues report each buffer's length (MRG_RXBUF spreads a
// frame over several buffers and says how many in num_buffers).
//
// Benchmark modes replace the switch for frames the guest sends: reflect
// (MACs swapped, back into the same queue pair's receive queue), sink (counted
// and completed), source (the receive queues are filled with generated
// frames as fast as the driver posts buffers).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/device/virtio_device.h"
#include "dataplane/net/switch.h"
#include "dataplane/net/virtio_net.h"
#include "dataplane/worker/queue_set.h"

namespace sluice::net {

enum class PortMode : uint8_t { kSwitch, kReflect, kSink, kSource };
const char* mode_name(PortMode m);

struct NetOptions {
  std::string name = "net";
  uint16_t queue_pairs = 1;
  uint16_t queue_size = 1024;  // largest ring accepted
  uint16_t mtu = 1500;
  uint64_t mac = 0x525400000001ull;
  PortMode mode = PortMode::kSwitch;
  uint32_t source_frame = 64;  // frame bytes a source port generates
  // Port security (switch.h): the port sends with `mac` only and the guest
  // cannot change it (CTRL_MAC_ADDR_SET / a legacy config write of another
  // MAC fail).
  bool mac_lock = true;
  uint32_t max_macs = 64;       // source MACs learned on the port (mac_lock=false)
  uint32_t flood_rate = 10000;  // flooded frames per second (0: unlimited)
};

class NetQueue;
class NetRxQueue;

// The device's rx filter (VIRTIO_NET_CTRL_RX / CTRL_MAC), set through the
// control queue. Defaults: promiscuous, as a device without CTRL_RX is.
struct RxFilter {
  static constexpr unsigned kMaxMacs = 64;
  bool promisc = true;
  bool allmulti = true;
  uint32_t nuni = 0, nmulti = 0;
  bool uni_overflow = false, multi_overflow = false;  // more entries than we keep: accept all of that kind
  uint64_t uni[kMaxMacs] = {};
  uint64_t multi[kMaxMacs] = {};
};

class NetDevice final : public VirtioDevice, public SwitchPort {
 public:
  static Result<std::unique_ptr<NetDevice>> create(const NetOptions& opts, Switch& sw);
  ~NetDevice() override;

  // VirtioDevice
  uint32_t device_id() const override { return 1; }
  uint64_t device_features() const override;
  uint16_t max_queues() const override { return static_cast<uint16_t>(2 * opts_.queue_pairs + 1); }
  uint64_t queue_num() const override { return opts_.queue_pairs; }
  uint16_t max_queue_size() const override { return opts_.queue_size; }
  virtq::InOrderBatching batching(uint16_t q) const override;
  std::span<const uint8_t> config() const override;
  Status write_config(uint32_t offset, std::span<const uint8_t> data) override;
  void set_driver_features(uint64_t f) override;
  Status queue_started(const QueueBinding& b) override;
  void queue_stopped(uint16_t index) override;
  void call_fd_changed(uint16_t index, int call_fd) override;
  void reset() override;

  // SwitchPort (worker)
  void deliver(const Packet& p, uint16_t qp) override;
  bool accepts(uint64_t dst) const override;
  const char* kind() const override { return "vhost-user-net"; }

  const NetOptions& options() const noexcept { return opts_; }
  Switch& sw() noexcept { return sw_; }
  uint64_t mac() const;
  uint32_t hdr_len() const noexcept { return hdr_len_; }
  bool mrg_rxbuf() const noexcept { return mrg_; }
  // Queue pairs the driver asked for (VIRTIO_NET_CTRL_MQ), as last set.
  uint16_t active_pairs() const noexcept { return pairs_set_.load(std::memory_order_relaxed); }
  bool promisc() const noexcept { return promisc_view_.load(std::memory_order_relaxed); }
  uint64_t ctrl_commands() const noexcept { return ctrl_ok_.load(std::memory_order_relaxed); }
  uint64_t ctrl_errors() const noexcept { return ctrl_err_.load(std::memory_order_relaxed); }

 private:
  friend class NetTxQueue;
  friend class NetRxQueue;
  friend class NetCtrlQueue;
  NetDevice(const NetOptions& o, Switch& sw);
  // Control thread: rebuilds the list of running receive queues.
  void publish_rx();
  // Worker: the control queue's command; returns the ack byte.
  uint8_t control(uint8_t cls, uint8_t cmd, const uint8_t* data, uint32_t len);

  NetOptions opts_;
  Switch& sw_;
  mutable std::mutex config_mu_;  // the MAC in config_ changes from the worker (CTRL_MAC_ADDR_SET)
  NetConfig config_{};
  mutable NetConfig config_copy_{};
  uint64_t features_ = 0;
  uint64_t mac_ = 0;  // worker's copy of config_.mac (rx filter)
  uint32_t hdr_len_ = 12;
  bool mrg_ = false;
  bool guest_csum_ = false;
  WorkerQueues<NetQueue> queues_;
  std::vector<NetRxQueue*> rx_;  // by pair; control thread
  // Running receive queues for delivery, double-buffered: the control thread
  // fills the idle copy, publishes it, and waits for the worker's next burst.
  struct RxSet {
    uint16_t n = 0;
    NetRxQueue* q[kMqPairsMax > 256 ? 256 : kMqPairsMax] = {};
  };
  RxSet rxsets_[2];
  std::atomic<const RxSet*> rxset_{&rxsets_[0]};
  // Worker-owned state set by the control queue.
  RxFilter filter_;
  std::atomic<uint16_t> pairs_set_{1};
  std::atomic<bool> promisc_view_{true};
  std::atomic<uint64_t> ctrl_ok_{0}, ctrl_err_{0};
};

}  // namespace sluice::net
