// A switch port on a DPDK ethdev: any EAL device string (net_tap, net_ring,
// net_af_packet, net_pcap, a vfio-pci NIC). Built when DPDK is found
// (meson option `dpdk`, on by default).
//
// The port is polled by its switch's worker like every other port: received
// bursts go through the switch (copied into the receivers' buffers, mbufs
// freed in bulk); frames the switch hands it are copied into mbufs and sent
// in bursts at the end of the worker's burst. DPDK ports have no kick to
// sleep on, so a switch with an uplink polls continuously (as a DPDK PMD
// thread does). EAL starts once, on the first uplink, with the arguments
// given to init_eal().
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/net/switch.h"
#include "dataplane/worker/worker.h"

struct rte_mempool;
struct rte_mbuf;

namespace sluice::net {

// Starts DPDK's EAL once (later calls return the first call's result).
// `args` are EAL arguments after the program name; the defaults keep EAL out
// of the way of a daemon: --in-memory, no telemetry, and --no-huge when the
// machine has no free hugepages.
Status init_eal(const std::vector<std::string>& args, std::string& error);

class DpdkUplink final : public SwitchPort, public Pollable {
 public:
  // Probes the device (rte_dev_probe), configures one rx and one tx queue,
  // starts it in promiscuous mode, and joins the switch.
  static Result<std::unique_ptr<DpdkUplink>> open(const std::string& name, const std::string& devargs,
                                                  Switch& sw, uint16_t ring_size, const PortSecurity& sec,
                                                  std::string& error);
  ~DpdkUplink() override;

  // SwitchPort (worker)
  void deliver(const Packet& p, uint16_t qp) override;
  const char* kind() const override { return "dpdk"; }

  // Pollable
  unsigned poll(Worker& w, unsigned budget) override;
  void complete(Worker&, IoOp*, int) override {}
  void end_of_burst(Worker& w) override;
  int kick_fd() const override { return -1; }
  bool arm() override { return false; }  // never idle: no kick to wait for
  void disarm() override {}
  void quiesce() override { quiescing_ = true; }
  unsigned inflight() const override { return 0; }

  const std::string& devargs() const noexcept { return devargs_; }
  uint16_t port_id() const noexcept { return port_; }
  std::string driver() const;
  uint64_t mac() const noexcept { return mac_; }

 private:
  DpdkUplink(std::string name, std::string devargs, Switch& sw);
  void flush_tx();

  static constexpr unsigned kBurst = 32;
  std::string devargs_;
  Switch& sw_;
  uint16_t port_ = 0;
  bool started_ = false;
  bool attached_ = false;
  bool in_worker_ = false;
  bool quiescing_ = false;
  bool registered_ = false;  // the worker thread is an EAL thread (mempool caches)
  uint64_t mac_ = 0;
  rte_mempool* pool_ = nullptr;
  rte_mbuf* tx_[kBurst] = {};
  unsigned ntx_ = 0;
};

}  // namespace sluice::net
