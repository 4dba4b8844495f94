#include "dataplane/net/dpdk_uplink.h"

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <cstring>
#include <fstream>
#include <mutex>

#include "dataplane/base/log.h"

namespace sluice::net {

namespace {

std::mutex eal_mu;
bool eal_done = false;
int eal_rc = 0;
std::string eal_error;

unsigned free_hugepages() {
  std::ifstream f("/proc/meminfo");
  std::string k;
  unsigned long v;
  while (f >> k >> v) {
    if (k == "HugePages_Free:") return static_cast<unsigned>(v);
    f.ignore(256, '\n');
  }
  return 0;
}

std::string rte_err() { return rte_strerror(rte_errno); }

}  // namespace

Status init_eal(const std::vector<std::string>& args, std::string& error) {
  std::lock_guard lk(eal_mu);
  if (!eal_done) {
    std::vector<std::string> a{"sluiced", "--in-memory", "--no-telemetry", "--log-level=lib.eal:warning"};
    bool has_mem = false;
    for (const std::string& s : args) has_mem |= s == "--no-huge" || s == "-m" || s == "--socket-mem";
    // 64 MiB of hugepages at least, or EAL's memory comes from anonymous
    // memory (enough for the software ports; a NIC wants hugepages).
    if (!has_mem && free_hugepages() < 32) {
      a.push_back("--no-huge");
      a.push_back("-m");
      a.push_back("256");
    }
    a.insert(a.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& s : a) argv.push_back(s.data());
    std::string line;
    for (const std::string& s : a) line += " " + s;
    LOG_INFO("dpdk", "EAL:%s", line.c_str());
    eal_rc = rte_eal_init(static_cast<int>(argv.size()), argv.data());
    if (eal_rc < 0) eal_error = "rte_eal_init failed: " + rte_err();
    eal_done = true;
  }
  if (eal_rc < 0) {
    error = eal_error;
    return Errc::kSystem;
  }
  return {};
}

DpdkUplink::DpdkUplink(std::string name, std::string devargs, Switch& sw)
    : SwitchPort(std::move(name)), devargs_(std::move(devargs)), sw_(sw) {}

Result<std::unique_ptr<DpdkUplink>> DpdkUplink::open(const std::string& name, const std::string& devargs,
                                                     Switch& sw, uint16_t ring_size, const PortSecurity& sec,
                                                     std::string& error) {
  if (Status s = init_eal({}, error); !s.ok()) return s.error();
  std::unique_ptr<DpdkUplink> u(new DpdkUplink(name, devargs, sw));
  // The device's name is the device string up to its first comma.
  std::string dev = devargs.substr(0, devargs.find(','));
  if (rte_dev_probe(devargs.c_str()) != 0) {
    error = "cannot probe '" + devargs + "': " + rte_err();
    return Errc::kInvalidArgument;
  }
  if (rte_eth_dev_get_port_by_name(dev.c_str(), &u->port_) != 0) {
    error = "'" + dev + "' is not an ethdev";
    (void)rte_eal_hotplug_remove("vdev", dev.c_str());
    return Errc::kInvalidArgument;
  }
  u->attached_ = true;
  auto fail = [&](const std::string& what, int rc) -> Error {
    error = what + ": " + rte_strerror(rc < 0 ? -rc : rc);
    return Error(Errc::kSystem);
  };
  std::string pool = "sl_" + std::to_string(u->port_);
  u->pool_ = rte_pktmbuf_pool_create(pool.c_str(), 2u * ring_size + 4 * kBurst + 1024, 256, 0,
                                     RTE_MBUF_DEFAULT_BUF_SIZE, static_cast<int>(rte_socket_id()));
  if (u->pool_ == nullptr) return fail("cannot create the mbuf pool", rte_errno);
  rte_eth_conf conf{};
  if (int rc = rte_eth_dev_configure(u->port_, 1, 1, &conf); rc != 0) return fail("rte_eth_dev_configure", rc);
  uint16_t rxd = ring_size, txd = ring_size;
  (void)rte_eth_dev_adjust_nb_rx_tx_desc(u->port_, &rxd, &txd);
  int sock = rte_eth_dev_socket_id(u->port_);
  unsigned usock = sock < 0 ? 0u : static_cast<unsigned>(sock);
  if (int rc = rte_eth_rx_queue_setup(u->port_, 0, rxd, usock, nullptr, u->pool_); rc != 0)
    return fail("rx queue setup", rc);
  if (int rc = rte_eth_tx_queue_setup(u->port_, 0, txd, usock, nullptr); rc != 0) return fail("tx queue setup", rc);
  if (int rc = rte_eth_dev_start(u->port_); rc != 0) return fail("rte_eth_dev_start", rc);
  u->started_ = true;
  (void)rte_eth_promiscuous_enable(u->port_);  // a switch port takes every frame
  rte_ether_addr mac{};
  if (rte_eth_macaddr_get(u->port_, &mac) == 0)
    for (int i = 0; i < 6; ++i) u->mac_ = u->mac_ << 8 | mac.addr_bytes[i];
  u->set_security(sec);
  if (Status s = sw.add_port(*u); !s.ok()) {
    error = "switch " + sw.name() + " is full";
    return s.error();
  }
  sw.worker().attach(u.get());
  u->in_worker_ = true;
  return u;
}

DpdkUplink::~DpdkUplink() {
  sw_.remove_port(*this);  // no port delivers to us after this
  if (in_worker_) sw_.worker().detach(this);
  for (unsigned i = 0; i < ntx_; ++i) rte_pktmbuf_free(tx_[i]);
  ntx_ = 0;
  if (started_) (void)rte_eth_dev_stop(port_);
  if (attached_) {
    rte_eth_dev_info info{};
    rte_device* dev = rte_eth_dev_info_get(port_, &info) == 0 ? info.device : nullptr;
    (void)rte_eth_dev_close(port_);
    if (dev != nullptr) (void)rte_dev_remove(dev);  // a tap's interface goes with it
  }
  if (pool_ != nullptr) rte_mempool_free(pool_);
}

std::string DpdkUplink::driver() const {
  rte_eth_dev_info info{};
  if (rte_eth_dev_info_get(port_, &info) != 0 || info.driver_name == nullptr) return "?";
  return info.driver_name;
}

unsigned DpdkUplink::poll(Worker&, unsigned budget) {
  if (quiescing_) return 0;
  if (!registered_) {
    // mempool caches are per EAL thread: make the worker one.
    registered_ = true;
    if (rte_lcore_id() == LCORE_ID_ANY && rte_thread_register() != 0)
      LOG_WARN("dpdk", "%s: worker not registered with EAL (%s): mbufs without a cache", name().c_str(),
               rte_strerror(rte_errno));
  }
  rte_mbuf* m[kBurst];
  uint16_t n = rte_eth_rx_burst(port_, 0, m, static_cast<uint16_t>(std::min(budget, kBurst)));
  if (n == 0) return 0;
  PortStats& st = stats();
  uint64_t now = Switch::now_ns();
  iovec iov[8];
  for (uint16_t i = 0; i < n; ++i) {
    rte_mbuf* b = m[i];
    if (i + 1 < n) rte_prefetch0(rte_pktmbuf_mtod(m[i + 1], void*));
    uint32_t niov = 0;
    for (rte_mbuf* s = b; s != nullptr && niov < 8; s = s->next)
      iov[niov++] = iovec{rte_pktmbuf_mtod(s, void*), s->data_len};
    if (b->pkt_len < kEthHdrLen || b->nb_segs > 8) {
      st.drop(b->pkt_len < kEthHdrLen ? Drop::kRunt : Drop::kOversize);
      continue;
    }
    Packet p;
    p.iov = iov;
    p.niov = niov;
    p.len = b->pkt_len;
    if (b->data_len >= kEthHdrLen)
      std::memcpy(p.eth, rte_pktmbuf_mtod(b, void*), kEthHdrLen);
    else
      rte_pktmbuf_read(b, 0, kEthHdrLen, p.eth);
    PortStats::add(st.tx_packets, 1);
    PortStats::add(st.tx_bytes, p.len);
    sw_.forward(*this, p, 0, now);
  }
  rte_pktmbuf_free_bulk(m, n);
  return n;
}

void DpdkUplink::deliver(const Packet& p, uint16_t) {
  PortStats& st = stats();
  if (p.len > RTE_MBUF_DEFAULT_DATAROOM) {
    st.drop(Drop::kOversize);
    return;
  }
  rte_mbuf* m = rte_pktmbuf_alloc(pool_);
  if (m == nullptr) {
    st.drop(Drop::kUplinkFull);
    return;
  }
  char* d = rte_pktmbuf_append(m, static_cast<uint16_t>(p.len));
  p.copy_out(0, d, p.len, /*finish_csum=*/true);  // a wire frame carries a finished checksum
  tx_[ntx_++] = m;
  if (ntx_ == kBurst) flush_tx();
}

void DpdkUplink::end_of_burst(Worker&) {
  if (ntx_ != 0) flush_tx();
}

void DpdkUplink::flush_tx() {
  PortStats& st = stats();
  uint16_t sent = rte_eth_tx_burst(port_, 0, tx_, static_cast<uint16_t>(ntx_));
  uint64_t bytes = 0;
  for (uint16_t i = 0; i < sent; ++i) bytes += tx_[i]->pkt_len;
  PortStats::add(st.rx_packets, sent);
  PortStats::add(st.rx_bytes, bytes);
  for (unsigned i = sent; i < ntx_; ++i) {
    rte_pktmbuf_free(tx_[i]);
    st.drop(Drop::kUplinkFull);
  }
  ntx_ = 0;
}

}  // namespace sluice::net
