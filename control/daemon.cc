#include "control/daemon.h"

#include <sys/eventfd.h>

#include <linux/pci_regs.h>
#include <linux/virtio_blk.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <variant>

#include "dataplane/base/log.h"
#include "vfio/irq_platform.h"

namespace sluice::control {

namespace json = boost::json;

namespace {
std::string err_text(const Error& e) {
  std::string s(e.name());
  if (e.sys_errno != 0) s += std::string(" (") + std::strerror(e.sys_errno) + ")";
  return s;
}
}  // namespace

// ---------------------------------------------------------------- Export

Export::Export(Daemon& d, std::string id, std::string path, ExportLimits limits)
    : id_(std::move(id)), path_(std::move(path)), acceptor_(d.io()), accept_retry_(d.io(), "export " + id_),
      limits_(limits), daemon_(d) {}

Export::~Export() { *alive_ = false; }

void Export::start(const ApiCaller& by) {
  clear_stale_socket(path_);  // e.g. from an earlier run; anything else stays
  unix_socket::endpoint ep(path_);
  acceptor_.open(ep.protocol());
  acceptor_.bind(ep);
  ::chmod(path_.c_str(), 0600);
  // A member's export is the member's to connect its VMM to.
  if (!by.owner && ::lchown(path_.c_str(), by.uid, static_cast<gid_t>(-1)) != 0)
    LOG_WARN("daemon", "cannot give %s to uid %u: %s", path_.c_str(), by.uid, std::strerror(errno));
  acceptor_.listen();
  accept();
}

void Export::stop() {
  end_session("export stopped");
  if (acceptor_.is_open()) {
    boost::system::error_code ec;
    acceptor_.close(ec);
    ::unlink(path_.c_str());
  }
}

namespace {
// Whether the peer of a connected socket has hung up (nothing waits).
bool peer_gone(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}
}  // namespace

void Export::accept() {
  // Handlers may run after the export is gone (removed while an accept or a
  // wait was queued): they check the export's liveness token first.
  acceptor_.async_accept([this, alive = alive_](boost::system::error_code ec, unix_socket::socket s) {
    if (!*alive) return;
    if (ec) {
      if (acceptor_.is_open() && ec != asio::error::operation_aborted)
        accept_retry_.after_error(ec, [this, alive] {
          if (*alive && acceptor_.is_open()) accept();
        });
      return;
    }
    if (conn_ && peer_gone(conn_->native_handle())) {
      // The previous front-end hung up and we have not read its close yet
      // (it reconnected at once): that session ends now, this one is served.
      end_session("front-end closed the connection");
    }
    if (conn_) {
      // vhost-user is one front-end per socket: a second one is turned away
      // and the first keeps its device.
      LOG_LIMITED(log_limit_, LogLevel::kWarn, "export", "%s: refusing a second front-end while one is connected",
                  id_.c_str());
      boost::system::error_code ignore;
      s.close(ignore);
    } else {
      // Messages are assembled as they arrive and replies sent without
      // waiting (on_readable): a stalled front-end holds nothing but itself.
      conn_.emplace(std::move(s));
      reader_.next();
      session_ = std::make_unique<vhost::Session>(device(), id_);
      session_->set_memory_limits(MemoryLimits{limits_.max_memory, limits_.max_regions});
      // The session's memory is empty now; from its first SET_MEM_TABLE on,
      // every region is mapped for the VFIO containers before any ring uses
      // it: the daemon's (--vfio-group) and an offload device's own.
      for (vfio::DmaMapper* m : daemon_.dma_mappers()) (void)dma_.attach(m, *session_->memory().snapshot());
      if (vfio::DmaMapper* m = own_mapper()) (void)dma_.attach(m, *session_->memory().snapshot());
      session_->add_memory_listener(&dma_);
      ++sessions_;
      LOG_LIMITED(log_limit_, LogLevel::kInfo, "export", "%s: front-end connected", id_.c_str());
      wait_message();
    }
    accept();
  });
}

void Export::wait_message() {
  conn_->async_wait(unix_socket::socket::wait_read, [this, alive = alive_](boost::system::error_code ec) {
    if (!*alive) return;
    if (ec == asio::error::operation_aborted || !conn_) return;
    if (ec) {
      end_session("socket error");
      return;
    }
    on_readable();
  });
}

void Export::on_readable() {
  // Pipelined messages are handled in order, a few per wake-up: the control
  // thread serves every export and the API in between.
  for (int handled = 0; handled < kMessagesPerWake; ++handled) {
    auto got = reader_.read(conn_->native_handle());
    if (!got.ok()) {
      end_session(got.error() == Errc::kPeerClosed ? "front-end closed the connection"
                                                   : std::string(got.error().name()).c_str());
      return;
    }
    if (!got.value()) break;  // the rest of the message has not arrived
    vhost::Response r = session_->handle(reader_.message());
    reader_.next();
    if (r.error.code != Errc::kOk) ++refused_messages_;
    if (device().abandoned_queues() != abandoned_seen_) [[unlikely]] {
      // A queue's requests outlived the stop deadline (a hung file or
      // device): its ring state is lost, so is the session.
      abandoned_seen_ = device().abandoned_queues();
      end_session("a queue's requests did not complete within the stop deadline: abandoned");
      return;
    }
    if (r.send) {
      Status w = vhost::send_message(conn_->native_handle(), r.hdr, r.payload, r.fds, /*nonblocking=*/true);
      if (!w.ok()) {
        end_session("the front-end does not take its replies");
        return;
      }
    }
    if (r.close) {
      end_session("protocol error");
      return;
    }
  }
  wait_message();
}

void Export::end_session(const char* why) {
  if (!conn_) return;
  if (device().abandoned_queues() != abandoned_seen_)
    why = "a queue's requests did not complete within the stop deadline: abandoned";
  LOG_LIMITED(log_limit_, LogLevel::kInfo, "export", "%s: session ended: %s", id_.c_str(), why);
  // Destroying the session stops every ring: the workers complete what they
  // took before the device lets go of the queues. Only then does its memory
  // leave the IOMMU (the table we hold keeps the mappings alive until then).
  auto table = session_->memory().snapshot();
  session_->remove_memory_listener(&dma_);
  session_.reset();
  abandoned_seen_ = device().abandoned_queues();
  dma_.release(*table);
  boost::system::error_code ignore;
  conn_->close(ignore);
  conn_.reset();
}

void Export::describe_session(json::object& o) const {
  o["connected"] = conn_.has_value();
  o["sessions"] = sessions_;
  o["refused_messages"] = refused_messages_;
  o["abandoned_queues"] = const_cast<Export*>(this)->device().abandoned_queues();
  json::array regions;
  if (session_) {
    for (const GuestRegion& r : session_->memory().snapshot()->regions())
      regions.push_back(json::object{{"gpa", r.guest_phys},
                                     {"size", r.size},
                                     {"hugetlbfs", r.hugetlbfs},
                                     {"sealed", r.sealed}});
  }
  o["regions"] = std::move(regions);
  o["poisoned_pages"] = poisoned_pages();
}

json::array Export::poisoned_pages() const {
  json::array a;
  if (!session_) return a;
  const fault::PoisonList& pl = session_->memory().snapshot()->poison();
  for (uint32_t i = 0; i < pl.size(); ++i) {
    fault::PoisonList::Page p = pl.at(i);
    if (p.size == 0) continue;  // being recorded
    a.push_back(json::object{{"gpa", p.gpa}, {"size", p.size}, {"cause", fault::cause_name(p.cause)}});
  }
  return a;
}

uint16_t Export::virtqueues() const {
  return const_cast<Export*>(this)->device().max_queues();
}

json::array Export::irq() const {
  json::array a;
  for (uint16_t i = 0; i < virtqueues(); ++i)
    a.push_back(json::object{{"export", id_},
                             {"queue", i},
                             {"kind", "software"},
                             {"eventfd", session_ ? session_->call_fd(i) : -1},
                             {"running", queue_running(i)},
                             {"bypass_eligible", false}});
  return a;
}

void Export::metrics(MetricsText& m) const {
  const MetricsText::Labels ex{{"export", id_}, {"type", type()}};
  m.add("sluice_export_connected", "gauge", "1 while a vhost-user front-end is connected.", ex,
        conn_.has_value() ? 1 : 0);
  m.add("sluice_export_sessions_total", "counter", "Front-end sessions accepted.", ex,
        static_cast<double>(sessions_));
  m.add("sluice_export_refused_messages_total", "counter", "vhost-user messages refused.", ex,
        static_cast<double>(refused_messages_));
  m.add("sluice_export_poisoned_pages", "gauge",
        "Guest pages of the current session that faulted (truncated, hardware-poisoned): never used again.", ex,
        static_cast<double>(poisoned_pages().size()));
}

// ---------------------------------------------------------------- BlkExport

BlkExport::BlkExport(Daemon& d, BlkSpec spec, std::unique_ptr<blk::BlkDevice> dev,
                     std::unique_ptr<VfioParts> vfio)
    : Export(d, spec.id, spec.path, spec.limits), spec_(std::move(spec)), dev_(std::move(dev)),
      vfio_dev_(std::move(vfio)) {}

BlkExport::~BlkExport() { stop(); }

VirtioDevice& BlkExport::device() {
  if (vfio_dev_ && vfio_dev_->virtio) return *vfio_dev_->virtio;
  if (vfio_dev_) return *vfio_dev_->passthrough;
  return *dev_;
}

uint16_t BlkExport::queues() const { return virtqueues(); }

json::object BlkExport::describe() const {
  json::object o;
  o["id"] = spec_.id;
  o["type"] = "vhost-user-blk";
  o["socket"] = spec_.path;
  o["file"] = spec_.file;
  if (vfio_dev_ && vfio_dev_->passthrough) {
    const vfio::PassthroughBlkDevice& p = *vfio_dev_->passthrough;
    o["size"] = p.capacity_bytes();
    o["queues"] = p.max_queues();
    o["read_only"] = ((p.device_features() >> VIRTIO_BLK_F_RO) & 1) != 0;
    o["direct_io"] = false;
    o["vfio_backend"] = json::object{{"device", spec_.vfio},
                                     {"vectors", std::string(vfio::vector_policy_name(vfio_dev_->passthrough->driver().pci().policy()))},
                                     {"device_queues", vfio_dev_->passthrough->driver().queues()}};
  } else if (vfio_dev_) {
    uint64_t sectors = 0;
    auto cfg = vfio_dev_->virtio->config();
    if (cfg.size() >= 8) std::memcpy(&sectors, cfg.data(), 8);
    o["size"] = sectors * 512;
    o["queues"] = vfio_dev_->virtio->max_queues();
    o["read_only"] = false;
    o["direct_io"] = false;
    o["offload"] = json::object{{"device", spec_.vfio},
                                {"vectors", std::string(vfio::vector_policy_name(vfio_dev_->virtio->pci().policy()))},
                                {"hardware_features", vfio_dev_->virtio->hardware_features()}};
  } else {
    o["size"] = dev_->capacity_bytes();
    o["queues"] = spec_.queues;
    o["read_only"] = spec_.read_only;
    o["direct_io"] = dev_->direct_io();
  }
  describe_session(o);
  return o;
}

json::object BlkExport::stats() const {
  json::object o;
  o["id"] = spec_.id;
  json::array qs;
  if (vfio_dev_ && vfio_dev_->passthrough) {
    for (uint16_t i = 0; i < vfio_dev_->passthrough->max_queues(); ++i) {
      const vfio::PassthroughQueueStats& st = vfio_dev_->passthrough->stats(i);
      qs.push_back(json::object{{"queue", i},
                                {"running", queue_running(i)},
                                {"requests", st.requests.load(std::memory_order_relaxed)},
                                {"read_bytes", 0},
                                {"write_bytes", 0},
                                {"errors", st.errors.load(std::memory_order_relaxed)},
                                {"flushes", 0},
                                {"used_ring_batches", 0},
                                {"device_interrupts", st.device_irqs.load(std::memory_order_relaxed)}});
    }
    o["queues"] = std::move(qs);
    return o;
  }
  if (vfio_dev_) {
    // The device runs these queues: what we see is the plumbing, not requests.
    for (uint16_t i = 0; i < vfio_dev_->virtio->max_queues(); ++i) {
      vfio::OffloadQueueStats s = vfio_dev_->virtio->queue_stats(i);
      qs.push_back(json::object{{"queue", i},
                                {"running", s.running},
                                {"offloaded", true},
                                {"vector", s.vector},
                                {"call_fd", s.call_fd},
                                {"kicks_relayed", s.kicks}});
    }
    o["queues"] = std::move(qs);
    return o;
  }
  for (uint16_t i = 0; i < spec_.queues; ++i) {
    const blk::BlkQueueStats& s = dev_->stats(i);
    json::object q;
    q["queue"] = i;
    q["running"] = queue_running(i);
    q["requests"] = s.requests.load(std::memory_order_relaxed);
    q["read_bytes"] = s.read_bytes.load(std::memory_order_relaxed);
    q["write_bytes"] = s.write_bytes.load(std::memory_order_relaxed);
    q["errors"] = s.errors.load(std::memory_order_relaxed);
    q["flushes"] = s.flushes.load(std::memory_order_relaxed);
    q["used_ring_batches"] = s.batches.load(std::memory_order_relaxed);
    q["guest_faults"] = s.guest_faults.load(std::memory_order_relaxed);
    if (s.broken.load(std::memory_order_relaxed)) {
      q["broken"] = errc_name(s.broken_reason.load(std::memory_order_relaxed));
      if (uint64_t gpa = s.fault_gpa.load(std::memory_order_relaxed)) q["fault_gpa"] = gpa;
    }
    qs.push_back(std::move(q));
  }
  o["queues"] = std::move(qs);
  o["poisoned_pages"] = poisoned_pages();
  return o;
}

json::array BlkExport::irq() const {
  json::array a;
  if (vfio_dev_ && vfio_dev_->virtio) {
    for (uint16_t i = 0; i < vfio_dev_->virtio->max_queues(); ++i) {
      vfio::OffloadQueueStats s = vfio_dev_->virtio->queue_stats(i);
      a.push_back(json::object{
          {"export", spec_.id},
          {"queue", i},
          {"kind", "device-vector"},
          {"device", spec_.vfio},
          {"vector", s.vector},
          {"eventfd", s.call_fd},
          {"running", s.running},
          // The device's MSI-X fires the VMM's call fd directly: when the VMM
          // made that fd a KVM irqfd, the kernel can post it to the guest.
          {"bypass_eligible", s.running && s.call_fd >= 0}});
    }
    return a;
  }
  return Export::irq();
}

void BlkExport::metrics(MetricsText& m) const {
  Export::metrics(m);
  if (vfio_dev_ && vfio_dev_->virtio) {
    for (uint16_t i = 0; i < vfio_dev_->virtio->max_queues(); ++i) {
      vfio::OffloadQueueStats st = vfio_dev_->virtio->queue_stats(i);
      MetricsText::Labels l{{"export", spec_.id}, {"queue", std::to_string(i)}};
      m.add("sluice_queue_running", "gauge", "1 while the queue runs.", l, st.running ? 1 : 0);
      m.add("sluice_queue_offload_kicks_total", "counter", "Kicks relayed to an offload device's doorbell.",
            l, static_cast<double>(st.kicks));
    }
    return;
  }
  uint16_t nq = vfio_dev_ ? vfio_dev_->passthrough->max_queues() : spec_.queues;
  for (uint16_t i = 0; i < nq; ++i) {
    MetricsText::Labels l{{"export", spec_.id}, {"queue", std::to_string(i)}};
    m.add("sluice_queue_running", "gauge", "1 while the queue runs.", l, queue_running(i) ? 1 : 0);
    if (vfio_dev_) {
      const vfio::PassthroughQueueStats& st = vfio_dev_->passthrough->stats(i);
      m.add("sluice_queue_requests_total", "counter", "Requests taken from the ring.", l,
            static_cast<double>(st.requests.load(std::memory_order_relaxed)));
      m.add("sluice_queue_errors_total", "counter", "Requests completed with an error status.", l,
            static_cast<double>(st.errors.load(std::memory_order_relaxed)));
      m.add("sluice_queue_device_interrupts_total", "counter", "Interrupts from the VFIO device serving the queue.",
            l, static_cast<double>(st.device_irqs.load(std::memory_order_relaxed)));
      continue;
    }
    const blk::BlkQueueStats& st = dev_->stats(i);
    auto v = [](const std::atomic<uint64_t>& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); };
    m.add("sluice_queue_requests_total", "counter", "Requests taken from the ring.", l, v(st.requests));
    m.add("sluice_queue_read_bytes_total", "counter", "Bytes read for the guest.", l, v(st.read_bytes));
    m.add("sluice_queue_write_bytes_total", "counter", "Bytes written for the guest.", l, v(st.write_bytes));
    m.add("sluice_queue_errors_total", "counter", "Requests completed with an error status.", l, v(st.errors));
    m.add("sluice_queue_flushes_total", "counter", "FLUSH requests.", l, v(st.flushes));
    m.add("sluice_queue_guest_faults_total", "counter",
          "Requests failed because their guest memory faulted (SIGBUS, EFAULT, a poisoned page).", l,
          v(st.guest_faults));
    m.add("sluice_queue_broken", "gauge", "1 once the guest broke the ring (sticky until the queue restarts).", l,
          st.broken.load(std::memory_order_relaxed) ? 1 : 0);
    // Used-ring batch sizes: cumulative buckets 1, 2, 4, ..., 128, +Inf.
    uint64_t cum = 0;
    for (unsigned b = 0; b < blk::BlkQueueStats::kBatchBuckets; ++b) {
      cum += st.batch_hist[b].load(std::memory_order_relaxed);
      MetricsText::Labels lb = l;
      lb.emplace_back("le", b + 1 < blk::BlkQueueStats::kBatchBuckets ? std::to_string(1u << b) : "+Inf");
      m.add("sluice_queue_used_batch_size", "histogram", "Completions published per used-index update.", lb,
            static_cast<double>(cum), "_bucket");
    }
    m.add("sluice_queue_used_batch_size", "histogram", "Completions published per used-index update.", l,
          v(st.batch_sum), "_sum");
    m.add("sluice_queue_used_batch_size", "histogram", "Completions published per used-index update.", l,
          static_cast<double>(cum), "_count");
  }
}

// ---------------------------------------------------------------- NetExport

NetExport::NetExport(Daemon& d, NetSpec spec, std::unique_ptr<net::NetDevice> dev)
    : Export(d, spec.id, spec.path, spec.limits), spec_(std::move(spec)), dev_(std::move(dev)) {}

NetExport::~NetExport() { stop(); }

namespace {
// A port's counters and what its security lets it do (switch.h).
json::object port_counters(const net::Switch& sw, const net::SwitchPort& p) {
  const net::PortStats& st = p.stats();
  auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  json::object drops;
  for (unsigned k = 0; k < net::kDropKinds; ++k)
    drops[net::drop_name(static_cast<net::Drop>(k))] = v(st.drops[k]);
  const net::PortSecurity& sec = p.security();
  json::object security{{"mac_lock", sec.locked_mac != 0}, {"max_macs", sec.max_macs}, {"flood_rate", sec.flood_rate}};
  if (sec.locked_mac != 0) security["locked_mac"] = net::format_mac(sec.locked_mac);
  return json::object{{"tx_packets", v(st.tx_packets)}, {"tx_bytes", v(st.tx_bytes)},
                      {"rx_packets", v(st.rx_packets)}, {"rx_bytes", v(st.rx_bytes)},
                      {"drops", std::move(drops)},
                      {"macs_learned", sw.macs_learned(p)},
                      {"learn_refused", json::object{{"port_limit", v(st.learn_port_limit)},
                                                     {"table_full", v(st.learn_table_full)}}},
                      {"security", std::move(security)}};
}
}  // namespace

json::object NetExport::describe() const {
  json::object o;
  o["id"] = spec_.id;
  o["type"] = "vhost-user-net";
  o["socket"] = spec_.path;
  o["switch"] = spec_.sw;
  o["mode"] = spec_.mode;
  o["mac"] = net::format_mac(dev_->mac());
  o["mtu"] = spec_.mtu;
  o["queues"] = spec_.queues;
  if (spec_.mode == "source") o["frame"] = spec_.frame;
  o["vnet_hdr_len"] = dev_->hdr_len();
  o["mrg_rxbuf"] = dev_->mrg_rxbuf();
  describe_session(o);
  return o;
}

json::object NetExport::stats() const {
  json::object o = port_counters(dev_->sw(), *dev_);
  o["id"] = spec_.id;
  o["switch"] = spec_.sw;
  o["promisc"] = dev_->promisc();
  o["active_pairs"] = dev_->active_pairs();
  o["ctrl_commands"] = dev_->ctrl_commands();
  o["ctrl_errors"] = dev_->ctrl_errors();
  json::array qs;
  for (uint16_t i = 0; i < dev_->max_queues(); ++i) qs.push_back(json::object{{"queue", i}, {"running", queue_running(i)}});
  o["queues"] = std::move(qs);
  o["poisoned_pages"] = poisoned_pages();
  return o;
}

void NetExport::metrics(MetricsText& m) const {
  Export::metrics(m);
  const net::PortStats& st = dev_->stats();
  MetricsText::Labels l{{"export", spec_.id}, {"switch", spec_.sw}};
  auto v = [](const std::atomic<uint64_t>& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); };
  m.add("sluice_port_tx_packets_total", "counter", "Frames the port's guest sent into the switch.", l, v(st.tx_packets));
  m.add("sluice_port_tx_bytes_total", "counter", "Bytes the port's guest sent into the switch.", l, v(st.tx_bytes));
  m.add("sluice_port_rx_packets_total", "counter", "Frames delivered to the port's guest.", l, v(st.rx_packets));
  m.add("sluice_port_rx_bytes_total", "counter", "Bytes delivered to the port's guest.", l, v(st.rx_bytes));
  for (unsigned k = 0; k < net::kDropKinds; ++k) {
    MetricsText::Labels ld = l;
    ld.emplace_back("reason", net::drop_name(static_cast<net::Drop>(k)));
    m.add("sluice_port_drops_total", "counter", "Frames dropped at the port, by reason.", ld, v(st.drops[k]));
  }
  for (auto [reason, c] : {std::pair{"port_limit", &st.learn_port_limit}, std::pair{"table_full", &st.learn_table_full}}) {
    MetricsText::Labels ld = l;
    ld.emplace_back("reason", reason);
    m.add("sluice_port_learn_refused_total", "counter",
          "Source MACs the switch did not learn on the port (frames still forwarded), by reason.", ld, v(*c));
  }
  m.add("sluice_port_macs_learned", "gauge", "Source MACs the switch has learned on the port.", l,
        static_cast<double>(dev_->sw().macs_learned(*dev_)));
}

// ---------------------------------------------------------------- Daemon

Daemon::Daemon(DaemonOptions opts)
    : opts_(std::move(opts)), qmp_cancel_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  // Without --socket-dir, the API socket's directory (start_api adds it).
  try {
    confine_ = Confinement(opts_.socket_dirs, opts_.file_dirs);
  } catch (const std::exception& e) {
    confine_error_ = e.what();
  }
}

Daemon::~Daemon() { shutdown(); }

void Daemon::check_new_export(const std::string& new_id, const std::string& path) const {
  if (exports_.count(new_id)) throw std::runtime_error("an export with id '" + new_id + "' exists");
  for (auto& [id, e] : exports_)
    if (e->path() == path) throw std::runtime_error("socket " + path + " is already used by export '" + id + "'");
}

void Daemon::add_blk(const BlkSpec& spec, const ApiCaller& by) {
  check_new_export(spec.id, spec.path);
  confine_.check_socket(spec.path, by);
  if (!spec.vfio.empty()) {
    if (!by.owner) throw PermissionError("vfio=" + spec.vfio + ": " + by.who() + " may not hand the daemon a PCI device");
    add_offload(spec);
    return;
  }
  // A member's file is opened beneath a file directory, then again by the
  // device through /proc/self/fd (the same file, whatever the path does since).
  UniqueFd file_fd;
  if (!spec.null_backend) file_fd = confine_.open_file(spec.file, spec.size != 0 && !spec.read_only, by);
  std::vector<Worker*> ws;
  for (auto& w : workers_) ws.push_back(w.get());
  blk::BlkOptions o;
  o.file = file_fd ? "/proc/self/fd/" + std::to_string(file_fd.get()) : spec.file;
  o.read_only = spec.read_only;
  o.size = spec.size;
  o.queues = spec.queues;
  o.queue_size = spec.queue_size;
  o.serial = spec.serial;
  o.null_backend = spec.null_backend;
  o.direct = spec.direct;
  auto dev = blk::BlkDevice::open(o, ws);
  if (!dev.ok()) throw std::runtime_error("cannot open " + spec.file + ": " + err_text(dev.error()));
  auto e = std::make_unique<BlkExport>(*this, spec, std::move(dev.value()));
  try {
    e->start(by);
  } catch (const std::exception& ex) {
    throw std::runtime_error("cannot listen on " + spec.path + ": " + ex.what());
  }
  LOG_INFO("daemon", "export %s: %s (%s%s, %u queue%s) on %s", spec.id.c_str(), spec.file.c_str(),
           format_size(e->describe().at("size").as_uint64()).c_str(), spec.read_only ? ", read-only" : "",
           spec.queues, spec.queues == 1 ? "" : "s", spec.path.c_str());
  exports_[spec.id] = std::move(e);
}

void Daemon::add_offload(const BlkSpec& spec) {
  vfio::Kernel& k = opts_.vfio_kernel ? *opts_.vfio_kernel : vfio::Kernel::real();
  auto parts = std::make_unique<VfioParts>();
  auto g = vfio::iommu_group_of(spec.vfio);
  if (!g.ok())
    throw std::runtime_error("vfio=" + spec.vfio + ": no IOMMU group (" + err_text(g.error()) +
                             "; is the device bound to vfio-pci?)");
  auto c = vfio::Container::open(k);
  if (!c.ok()) throw std::runtime_error("cannot open /dev/vfio/vfio: " + err_text(c.error()));
  parts->container = std::move(c.value());
  auto grp = vfio::Group::open(g.value(), k);
  if (!grp.ok())
    throw std::runtime_error("cannot open VFIO group " + std::to_string(g.value()) + " of " + spec.vfio + ": " +
                             err_text(grp.error()));
  parts->group = std::move(grp.value());
  if (Status s = parts->group->attach(*parts->container); !s.ok())
    throw std::runtime_error("cannot attach VFIO group: " + err_text(s.error()));
  auto dev = parts->group->open_device(spec.vfio);
  if (!dev.ok()) throw std::runtime_error("cannot open " + spec.vfio + ": " + err_text(dev.error()));
  parts->device = std::move(dev.value());
  parts->mapper = std::make_unique<vfio::DmaMapper>(*parts->container);
  auto did = parts->device->config_read16(PCI_DEVICE_ID);
  if (!did.ok() || did.value() != 0x1042)
    throw std::runtime_error(spec.vfio + " is not a modern virtio-blk device (PCI device id 0x1042)");
  if (spec.offload) {
    auto v = vfio::VirtioOffloadDevice::open(*parts->device);
    if (!v.ok())
      throw std::runtime_error(spec.vfio + " is not a usable virtio device: " + err_text(v.error()));
    parts->virtio = std::move(v.value());
  } else {
    // The device's own rings live at the top of its IOVA space, out of the
    // way of guest memory (IOVA = guest physical address).
    const auto& ranges = parts->container->info().ranges;
    uint64_t top = std::min<uint64_t>(ranges.back().last, (uint64_t{1} << 48) - 1);
    uint64_t arena = ((top + 1) - (uint64_t{1} << 30)) & ~((uint64_t{1} << 30) - 1);
    if (arena < ranges.back().start)
      throw std::runtime_error(spec.vfio + ": no room for the device's rings in its IOVA space");
    std::vector<Worker*> ws;
    for (auto& w : workers_) ws.push_back(w.get());
    auto p = vfio::PassthroughBlkDevice::open(*parts->device, *parts->mapper, ws, arena);
    if (!p.ok()) throw std::runtime_error(spec.vfio + ": cannot start the device: " + err_text(p.error()));
    parts->passthrough = std::move(p.value());
  }
  auto e = std::make_unique<BlkExport>(*this, spec, nullptr, std::move(parts));
  try {
    e->start();
  } catch (const std::exception& ex) {
    throw std::runtime_error("cannot listen on " + spec.path + ": " + ex.what());
  }
  LOG_INFO("daemon", "export %s: %s %s (%s) on %s", spec.id.c_str(),
           spec.offload ? "queues offloaded to" : "served by Sluice's workers on", spec.vfio.c_str(),
           format_size(e->describe().at("size").to_number<uint64_t>()).c_str(), spec.path.c_str());
  exports_[spec.id] = std::move(e);
}

net::Switch& Daemon::create_switch(const std::string& name, uint64_t aging_s) {
  check_switch_name(name);
  if (switches_.count(name)) throw std::runtime_error("switch '" + name + "' exists");
  if (aging_s == 0 || aging_s > 86400) throw std::runtime_error("aging: 1..86400 seconds");
  // Each switch runs on one worker: the one with the fewest switches.
  std::map<Worker*, unsigned> load;
  for (auto& w : workers_) load[w.get()] = 0;
  for (auto& [n, sw] : switches_) ++load[&sw->worker()];
  Worker* w = workers_.front().get();
  for (auto& ww : workers_)
    if (load[ww.get()] < load[w]) w = ww.get();
  auto sw = std::make_unique<net::Switch>(name, *w, aging_s);
  net::Switch& ref = *sw;
  switches_[name] = std::move(sw);
  LOG_INFO("daemon", "switch %s on %s (MAC aging %llus)", name.c_str(), w->name().c_str(),
           static_cast<unsigned long long>(aging_s));
  return ref;
}

void Daemon::delete_switch(const std::string& name) {
  auto it = switches_.find(name);
  if (it == switches_.end()) throw std::runtime_error("no switch '" + name + "'");
  if (!it->second->ports().empty())
    throw std::runtime_error("switch '" + name + "' has " + std::to_string(it->second->ports().size()) +
                             " port(s): remove them first");
  switches_.erase(it);
  LOG_INFO("daemon", "switch %s deleted", name.c_str());
}

json::array Daemon::switch_list() const {
  json::array a;
  for (auto& [name, sw] : switches_) {
    json::array ports;
    for (net::SwitchPort* p : sw->ports())
      ports.push_back(json::object{{"name", p->name()}, {"kind", p->kind()}, {"counters", port_counters(*sw, *p)}});
    a.push_back(json::object{{"name", name},
                             {"worker", sw->worker().name()},
                             {"aging_s", sw->aging_s()},
                             {"flooded", sw->flooded()},
                             {"learned", sw->learned()},
                             {"ports", std::move(ports)}});
  }
  return a;
}

json::array Daemon::mac_table(const std::string& name) const {
  auto it = switches_.find(name);
  if (it == switches_.end()) throw std::runtime_error("no switch '" + name + "'");
  json::array a;
  for (const net::MacEntry& e : it->second->mac_table())
    a.push_back(json::object{{"mac", net::format_mac(e.mac)}, {"port", e.port}, {"age_s", e.age_s}});
  return a;
}

void Daemon::add_net(const NetSpec& spec, const ApiCaller& by) {
  check_new_export(spec.id, spec.path);
  confine_.check_socket(spec.path, by);
  auto it = switches_.find(spec.sw);
  net::Switch& sw = it != switches_.end() ? *it->second : create_switch(spec.sw);
  net::NetOptions o;
  o.name = spec.id;
  o.queue_pairs = spec.queues;
  o.queue_size = spec.queue_size;
  o.mtu = spec.mtu;
  o.mac = spec.mac;
  o.mode = spec.mode == "reflect" ? net::PortMode::kReflect
           : spec.mode == "sink"  ? net::PortMode::kSink
           : spec.mode == "source" ? net::PortMode::kSource
                                   : net::PortMode::kSwitch;
  o.source_frame = spec.frame;
  o.mac_lock = spec.mac_lock;
  o.max_macs = spec.max_macs;
  o.flood_rate = spec.flood_rate;
  auto dev = net::NetDevice::create(o, sw);
  if (!dev.ok())
    throw std::runtime_error("cannot create port " + spec.id + " on switch " + spec.sw + ": " +
                             (dev.error() == Errc::kInvalidArgument && sw.ports().size() >= net::Switch::kMaxPorts
                                  ? std::string("the switch is full")
                                  : err_text(dev.error())));
  auto e = std::make_unique<NetExport>(*this, spec, std::move(dev.value()));
  try {
    e->start(by);
  } catch (const std::exception& ex) {
    throw std::runtime_error("cannot listen on " + spec.path + ": " + ex.what());
  }
  LOG_INFO("daemon", "export %s: virtio-net port on switch %s (%s, mode %s, %u queue pair%s, mtu %u) on %s",
           spec.id.c_str(), spec.sw.c_str(), net::format_mac(spec.mac).c_str(), spec.mode.c_str(), spec.queues,
           spec.queues == 1 ? "" : "s", spec.mtu, spec.path.c_str());
  exports_[spec.id] = std::move(e);
}

void Daemon::add_uplink(const UplinkSpec& spec) {
#ifdef SLUICE_HAVE_DPDK
  if (uplinks_.count(spec.name)) throw std::runtime_error("an uplink named '" + spec.name + "' exists");
  std::string err;
  // EAL probes no PCI device unless told which: the first uplink's, if it is
  // one, or those allowed in --dpdk-args (-a ADDR).
  std::vector<std::string> eal = opts_.dpdk_args;
  bool allow_list = false;
  for (const std::string& a : eal) allow_list |= a == "-a" || a.rfind("--allow", 0) == 0 || a == "--no-pci";
  std::string dev = spec.devargs.substr(0, spec.devargs.find(','));
  bool pci = dev.find(':') != std::string::npos && dev.find('.') != std::string::npos;
  if (!allow_list && !eal_started_) {
    if (pci) {
      eal.push_back("-a");
      eal.push_back(spec.devargs);
    } else {
      eal.push_back("--no-pci");
    }
  }
  if (Status s = net::init_eal(eal, err); !s.ok()) throw std::runtime_error("DPDK: " + err);
  eal_started_ = true;
  auto it = switches_.find(spec.sw);
  net::Switch& sw = it != switches_.end() ? *it->second : create_switch(spec.sw);
  auto u = net::DpdkUplink::open(spec.name, spec.devargs, sw, spec.queue_size,
                                 net::PortSecurity{0, spec.max_macs, spec.flood_rate}, err);
  if (!u.ok()) throw std::runtime_error("uplink " + spec.name + ": " + err);
  LOG_INFO("daemon", "uplink %s: DPDK port %u (%s, %s) on switch %s", spec.name.c_str(), u.value()->port_id(),
           u.value()->driver().c_str(), net::format_mac(u.value()->mac()).c_str(), spec.sw.c_str());
  uplinks_[spec.name] = std::move(u.value());
#else
  throw std::runtime_error("uplink " + spec.name + ": sluiced was built without DPDK (meson -Ddpdk=enabled, libdpdk-dev)");
#endif
}

void Daemon::remove_uplink(const std::string& name) {
#ifdef SLUICE_HAVE_DPDK
  if (uplinks_.erase(name) == 0)
#endif
    throw std::runtime_error("no uplink named '" + name + "'");
  LOG_INFO("daemon", "uplink %s removed", name.c_str());
}

void Daemon::remove(const std::string& id) {
  auto it = exports_.find(id);
  if (it == exports_.end()) throw std::runtime_error("no export with id '" + id + "'");
  if (attached_.count(id) || busy_.count(id))
    throw std::runtime_error("export '" + id + "' is attached to a VMM: detach it first");
  it->second->stop();
  exports_.erase(it);
  LOG_INFO("daemon", "export %s removed", id.c_str());
}

json::array Daemon::list() const {
  json::array a;
  for (auto& [id, e] : exports_) a.push_back(e->describe());
  return a;
}

json::array Daemon::worker_stats() const {
  json::array a;
  for (auto& w : workers_)
    a.push_back(json::object{{"name", w->name()}, {"polls", w->polls()}, {"sleeps", w->sleeps()},
                             {"busy_time", w->busy_time()}, {"busy_ns", w->busy_ns()},
                             {"uptime_ns", w->uptime_ns()}});
  return a;
}

json::value Daemon::stats(const std::string& id) const {
  if (!id.empty()) {
    auto it = exports_.find(id);
    if (it == exports_.end()) throw std::runtime_error("no export with id '" + id + "'");
    return it->second->stats();
  }
  json::array a;
  for (auto& [i, e] : exports_) a.push_back(e->stats());
  return a;
}

void Daemon::open_vfio() {
  vfio::Kernel& k = opts_.vfio_kernel ? *opts_.vfio_kernel : vfio::Kernel::real();
  for (int g : opts_.vfio_groups) {
    VfioDomain d;
    d.group = g;
    auto c = vfio::Container::open(k);
    if (!c.ok()) throw std::runtime_error("cannot open /dev/vfio/vfio: " + err_text(c.error()));
    d.container = std::move(c.value());
    auto grp = vfio::Group::open(g, k);
    if (!grp.ok())
      throw std::runtime_error("cannot open VFIO group " + std::to_string(g) + ": " + err_text(grp.error()) +
                               (grp.error() == Errc::kVfioGroupNotViable
                                    ? " (bind every device of the group to vfio-pci)"
                                    : ""));
    d.grp = std::move(grp.value());
    if (Status s = d.grp->attach(*d.container); !s.ok())
      throw std::runtime_error("cannot attach VFIO group " + std::to_string(g) + ": " + err_text(s.error()));
    d.mapper = std::make_unique<vfio::DmaMapper>(*d.container);
    const vfio::IommuInfo& info = d.container->info();
    LOG_INFO("daemon", "VFIO group %d: type%s IOMMU, page sizes 0x%llx, %zu IOVA range(s), %s mappings",
             g, d.container->iommu_type() == 3 ? "1v2" : "1",
             static_cast<unsigned long long>(info.iova_pgsizes), info.ranges.size(),
             info.dma_avail ? std::to_string(*info.dma_avail).c_str() : "unlimited");
    vfio_.push_back(std::move(d));
  }
}

std::vector<vfio::DmaMapper*> Daemon::dma_mappers() {
  std::vector<vfio::DmaMapper*> v;
  for (auto& d : vfio_) v.push_back(d.mapper.get());
  return v;
}

json::array Daemon::vfio_stats() const {
  json::array a;
  for (const VfioDomain& d : vfio_) {
    const vfio::IommuInfo& info = d.container->info();
    json::array ranges;
    for (const vfio::IovaRange& r : info.ranges)
      ranges.push_back(json::object{{"start", r.start}, {"last", r.last}});
    json::object o{{"group", d.group},
                   {"iommu", d.container->iommu_type() == 3 ? "type1v2" : "type1"},
                   {"iova_pgsizes", info.iova_pgsizes},
                   {"iova_ranges", std::move(ranges)},
                   {"kernel_mappings", d.mapper->kernel_mappings()},
                   {"regions", d.mapper->regions()},
                   {"map_calls", d.mapper->stats().map_calls},
                   {"unmap_calls", d.mapper->stats().unmap_calls},
                   {"rollbacks", d.mapper->stats().rollbacks}};
    if (info.dma_avail) o["dma_avail"] = *info.dma_avail - d.mapper->kernel_mappings();
    a.push_back(std::move(o));
  }
  return a;
}

json::object Daemon::irq() const {
  json::array vectors;
  for (auto& [id, e] : exports_)
    for (auto& v : e->irq()) vectors.push_back(v);
  vfio::IrqPlatform p = vfio::probe_irq_platform();
  auto tri = [](int v) -> json::value {
    if (v < 0) return nullptr;
    return v == 1;
  };
  return json::object{{"vectors", std::move(vectors)},
                      {"platform", json::object{{"arch", p.arch},
                                                {"kvm", p.kvm},
                                                {"cpu", p.cpu},
                                                {"cpu_posting", tri(p.cpu_ok)},
                                                {"iommu", p.iommu},
                                                {"iommu_posting", tri(p.iommu_ok)},
                                                {"bypass_possible", p.bypass_possible()}}}};
}

DaemonOptions load_config(const std::string& path, DaemonOptions o) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  json::value v;
  try {
    v = json::parse(ss.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  if (!v.is_object()) throw std::runtime_error(path + ": the top level must be an object");
  const json::object& c = v.as_object();
  auto bad = [&](const std::string& key, const std::string& why) {
    return std::runtime_error(path + ": \"" + key + "\" " + why);
  };
  auto str = [&](const char* key, std::string& out) {
    if (const json::value* x = c.if_contains(key)) {
      if (!x->is_string()) throw bad(key, "must be a string");
      out = std::string(x->as_string());
    }
  };
  auto num = [&](const char* key, unsigned lo, unsigned hi, unsigned& out) {
    if (const json::value* x = c.if_contains(key)) {
      if (!x->is_int64() || x->as_int64() < lo || x->as_int64() > hi)
        throw bad(key, "must be a number " + std::to_string(lo) + ".." + std::to_string(hi));
      out = static_cast<unsigned>(x->as_int64());
    }
  };
  auto ints = [&](const char* key, std::vector<int>& out) {
    if (const json::value* x = c.if_contains(key)) {
      if (!x->is_array()) throw bad(key, "must be an array of numbers");
      out.clear();
      for (const json::value& e : x->as_array()) {
        if (!e.is_int64() || e.as_int64() < 0 || e.as_int64() > 65535) throw bad(key, "must hold numbers 0..65535");
        out.push_back(static_cast<int>(e.as_int64()));
      }
    }
  };
  auto strs = [&](const char* key, std::vector<std::string>& out) {
    if (const json::value* x = c.if_contains(key)) {
      if (!x->is_array()) throw bad(key, "must be an array of directory paths");
      out.clear();
      for (const json::value& e : x->as_array()) {
        if (!e.is_string() || e.as_string().empty() || e.as_string()[0] != '/')
          throw bad(key, "must hold absolute directory paths");
        out.emplace_back(e.as_string());
      }
    }
  };
  static const std::set<std::string> known = {"api", "api_group", "socket_dirs", "file_dirs", "metrics", "workers",
                                              "cpus", "poll_us", "vfio_groups", "exports"};
  for (const auto& kv : c)
    if (!known.count(std::string(kv.key()))) throw bad(std::string(kv.key()), "is not a known key");
  str("api", o.api_path);
  str("api_group", o.api_group);
  strs("socket_dirs", o.socket_dirs);
  strs("file_dirs", o.file_dirs);
  str("metrics", o.metrics);
  num("workers", 1, 64, o.workers);
  num("poll_us", 0, 1000000, o.poll_us);
  ints("cpus", o.cpus);
  ints("vfio_groups", o.vfio_groups);
  o.config = path;
  o.config_exports.clear();
  if (const json::value* x = c.if_contains("exports")) {
    if (!x->is_array()) throw bad("exports", "must be an array of {\"blk\": \"SPEC\"} or {\"net\": \"SPEC\"}");
    std::set<std::string> ids;
    for (const json::value& e : x->as_array()) {
      const json::value* b = e.is_object() ? e.as_object().if_contains("blk") : nullptr;
      const json::value* n = e.is_object() ? e.as_object().if_contains("net") : nullptr;
      const json::value* sv = b != nullptr ? b : n;
      if (sv == nullptr || !sv->is_string() || e.as_object().size() != 1)
        throw bad("exports", "entries must be {\"blk\": \"SPEC\"} or {\"net\": \"SPEC\"}");
      std::string id;
      try {
        if (b != nullptr) {
          o.blk.push_back(parse_blk_spec(std::string(sv->as_string())));
          id = o.blk.back().id;
        } else {
          o.net.push_back(parse_net_spec(std::string(sv->as_string())));
          id = o.net.back().id;
        }
      } catch (const SpecError& se) {
        throw bad("exports", std::string("has a bad spec: ") + se.what());
      }
      if (!ids.insert(id).second) throw bad("exports", "names export '" + id + "' twice");
      o.config_exports.push_back(id);
    }
  }
  return o;
}

json::object Daemon::reload() {
  if (opts_.config.empty()) throw std::runtime_error("sluiced was not started with --config: nothing to reload");
  DaemonOptions next = load_config(opts_.config);  // throws before anything changes
  json::array added, removed, replaced, unchanged, errors, restart;
  auto note = [&](json::array& a, const std::string& id) { a.push_back(json::string(id)); };
  if (next.workers != opts_.workers) restart.push_back("workers");
  if (next.cpus != opts_.cpus) restart.push_back("cpus");
  if (next.poll_us != opts_.poll_us) restart.push_back("poll_us");
  if (next.api_path != opts_.api_path) restart.push_back("api");
  if (next.api_group != opts_.api_group) restart.push_back("api_group");
  if (next.socket_dirs != opts_.socket_dirs) restart.push_back("socket_dirs");
  if (next.file_dirs != opts_.file_dirs) restart.push_back("file_dirs");
  if (next.metrics != opts_.metrics) restart.push_back("metrics");
  if (next.vfio_groups != opts_.vfio_groups) restart.push_back("vfio_groups");
  std::map<std::string, std::variant<BlkSpec, NetSpec>> want;
  for (const BlkSpec& b : next.blk) want[b.id] = b;
  for (const NetSpec& n : next.net) want[n.id] = n;
  auto same = [](const std::variant<BlkSpec, NetSpec>& w, const Export& e) {
    if (auto* b = std::get_if<BlkSpec>(&w)) {
      auto* be = dynamic_cast<const BlkExport*>(&e);
      return be != nullptr && be->spec() == *b;
    }
    auto* ne = dynamic_cast<const NetExport*>(&e);
    return ne != nullptr && ne->spec() == std::get<NetSpec>(w);
  };
  // Exports the old config defined and the new one drops or changes.
  std::vector<std::string> keep_config;
  for (const std::string& id : opts_.config_exports) {
    auto it = exports_.find(id);
    if (it == exports_.end()) continue;
    auto w = want.find(id);
    if (w != want.end() && same(w->second, *it->second)) {
      note(unchanged, id);
      keep_config.push_back(id);
      want.erase(w);
      continue;
    }
    try {
      remove(id);
      note(w == want.end() ? removed : replaced, id);
    } catch (const std::exception& e) {
      errors.push_back(json::object{{"id", id}, {"error", e.what()}});
      keep_config.push_back(id);
      if (w != want.end()) want.erase(w);
    }
  }
  for (auto& [id, spec] : want) {
    if (exports_.count(id)) {
      errors.push_back(json::object{{"id", id}, {"error", "an export with this id was added through the API"}});
      continue;
    }
    try {
      if (auto* b = std::get_if<BlkSpec>(&spec))
        add_blk(*b);
      else
        add_net(std::get<NetSpec>(spec));
      bool was_replaced = false;
      for (auto& r : replaced) was_replaced |= r.as_string() == id;
      if (!was_replaced) note(added, id);
      keep_config.push_back(id);
    } catch (const std::exception& e) {
      errors.push_back(json::object{{"id", id}, {"error", e.what()}});
    }
  }
  opts_.config_exports = keep_config;
  LOG_INFO("daemon", "reloaded %s: %zu added, %zu removed, %zu replaced, %zu unchanged, %zu errors",
           opts_.config.c_str(), added.size(), removed.size(), replaced.size(), unchanged.size(), errors.size());
  return json::object{{"added", added},       {"removed", removed}, {"replaced", replaced},
                      {"unchanged", unchanged}, {"errors", errors},   {"needs_restart", restart}};
}

void Daemon::attach(const std::string& id, const std::string& vmm_spec, Done done, const ApiCaller& by) {
  auto it = exports_.find(id);
  if (it == exports_.end()) return done(nullptr, "no export with id '" + id + "'");
  if (busy_.count(id)) return done(nullptr, "export '" + id + "' is being attached or detached already");
  if (auto a = attached_.find(id); a != attached_.end())
    return done(nullptr, "export '" + id + "' is already attached to " + a->second.vmm);
  std::string vmm;
  try {
    vmm = parse_vmm(vmm_spec);
    confine_.check_vmm(vmm, by);
  } catch (const PermissionError& e) {
    return done(nullptr, std::string("permission denied: ") + e.what());
  } catch (const std::exception& e) {
    return done(nullptr, e.what());
  }
  AttachRequest r{id, it->second->path(), vmm, it->second->queues(),
                  std::string(it->second->type()) == "net"};
  if (auto* n = dynamic_cast<const NetExport*>(it->second.get())) r.mac = net::format_mac(n->spec().mac);
  r.cancel_fd = qmp_cancel_.get();
  busy_.insert(id);
  vmm_ops_.emplace_back([this, r, done] {
    std::string err;
    Attachment a;
    try {
      a = qmp_attach(r);
    } catch (const std::exception& e) {
      err = e.what();
    }
    asio::post(io_, [this, r, a, err, done] {
      busy_.erase(r.export_id);
      if (!err.empty()) {
        LOG_WARN("vmm", "attaching %s to %s failed: %s", r.export_id.c_str(), r.vmm.c_str(), err.c_str());
        return done(nullptr, err);
      }
      attached_[r.export_id] = a;
      LOG_INFO("vmm", "export %s attached to %s (QEMU %s) as %s", r.export_id.c_str(), r.vmm.c_str(),
               a.qemu_version.c_str(), a.device_id.c_str());
      done(json::object{{"id", r.export_id}, {"vmm", a.vmm}, {"device", a.device_id}}, {});
    });
  });
}

void Daemon::detach(const std::string& id, Done done) {
  auto it = attached_.find(id);
  if (it == attached_.end()) return done(nullptr, "export '" + id + "' is not attached to a VMM");
  if (busy_.count(id)) return done(nullptr, "export '" + id + "' is being attached or detached already");
  Attachment a = it->second;
  busy_.insert(id);
  vmm_ops_.emplace_back([this, id, a, done] {
    std::string err;
    try {
      qmp_detach(a, std::chrono::seconds(60), qmp_cancel_.get());
    } catch (const std::exception& e) {
      err = e.what();
    }
    asio::post(io_, [this, id, a, err, done] {
      busy_.erase(id);
      if (!err.empty()) {
        LOG_WARN("vmm", "detaching %s from %s failed: %s", id.c_str(), a.vmm.c_str(), err.c_str());
        return done(nullptr, err);
      }
      attached_.erase(id);
      LOG_INFO("vmm", "export %s detached from %s", id.c_str(), a.vmm.c_str());
      done(json::object{{"id", id}, {"vmm", a.vmm}}, {});
    });
  });
}

json::array Daemon::vmm_list() const {
  std::map<std::string, json::array> by_vmm;
  for (const auto& [id, a] : attached_)
    by_vmm[a.vmm].push_back(json::object{{"export", id}, {"device", a.device_id}, {"qemu", a.qemu_version}});
  json::array out;
  for (auto& [vmm, list] : by_vmm) out.push_back(json::object{{"vmm", vmm}, {"attached", std::move(list)}});
  return out;
}

std::string Daemon::metrics_text() const {
  MetricsText m;
  for (auto& [id, e] : exports_) e->metrics(m);
  for (auto& w : workers_) {
    MetricsText::Labels l{{"worker", w->name()}};
    double sleep = static_cast<double>(w->sleep_ns()) / 1e9;
    double up = static_cast<double>(w->uptime_ns()) / 1e9;
    m.add("sluice_worker_sleep_seconds_total", "counter", "Time a worker slept in the kernel waiting for kicks or I/O.",
          l, sleep);
    m.add("sluice_worker_poll_seconds_total", "counter", "Time a worker was awake: polling and serving requests.", l,
          up > sleep ? up - sleep : 0);
    m.add("sluice_worker_sleeps_total", "counter", "Times a worker went to sleep.", l,
          static_cast<double>(w->sleeps()));
    if (w->busy_time())
      m.add("sluice_worker_busy_seconds_total", "counter", "Time a worker spent in poll loops that found work.", l,
            static_cast<double>(w->busy_ns()) / 1e9);
  }
  for (const VfioDomain& d : vfio_) {
    MetricsText::Labels l{{"group", std::to_string(d.group)}};
    m.add("sluice_vfio_kernel_mappings", "gauge", "VFIO DMA mappings in use in the container.", l,
          static_cast<double>(d.mapper->kernel_mappings()));
    m.add("sluice_vfio_map_calls_total", "counter", "VFIO_IOMMU_MAP_DMA calls made.", l,
          static_cast<double>(d.mapper->stats().map_calls));
  }
  return m.render();
}

int Daemon::run() {
  if (!confine_error_.empty()) {
    LOG_ERROR("daemon", "%s", confine_error_.c_str());
    return 1;
  }
  try {
    open_vfio();
  } catch (const std::exception& e) {
    LOG_ERROR("daemon", "%s", e.what());
    return 1;
  }
  for (unsigned i = 0; i < std::max(1u, opts_.workers); ++i) {
    WorkerOptions wo;
    wo.name = "worker" + std::to_string(i);
    wo.poll_us = opts_.poll_us;
    wo.busy_time = opts_.busy_time;
    wo.stop_timeout = std::chrono::milliseconds(opts_.stop_timeout_ms);
    if (!opts_.cpus.empty()) wo.cpu = opts_.cpus[i % opts_.cpus.size()];
    auto w = std::make_unique<Worker>(wo);
    Status s = w->start();
    if (!s.ok()) {
      LOG_ERROR("daemon", "cannot start a worker: %s", err_text(s.error()).c_str());
      return 1;
    }
    workers_.push_back(std::move(w));
  }
  for (const BlkSpec& b : opts_.blk) {
    try {
      add_blk(b);
    } catch (const std::exception& e) {
      LOG_ERROR("daemon", "export %s: %s", b.id.c_str(), e.what());
      shutdown();
      return 1;
    }
  }
  for (const NetSpec& n : opts_.net) {
    try {
      add_net(n);
    } catch (const std::exception& e) {
      LOG_ERROR("daemon", "export %s: %s", n.id.c_str(), e.what());
      shutdown();
      return 1;
    }
  }
  for (const UplinkSpec& u : opts_.uplinks) {
    try {
      add_uplink(u);
    } catch (const std::exception& e) {
      LOG_ERROR("daemon", "%s", e.what());
      shutdown();
      return 1;
    }
  }
  if (!opts_.metrics.empty()) {
    try {
      auto [host, port] = parse_listen(opts_.metrics);
      metrics_ = std::make_unique<MetricsServer>(io_, *this, host, port);
      metrics_->start();
      LOG_INFO("daemon", "metrics on http://%s:%u/metrics", host.c_str(), metrics_->port());
    } catch (const std::exception& e) {
      LOG_ERROR("daemon", "metrics on %s: %s", opts_.metrics.c_str(), e.what());
      shutdown();
      return 1;
    }
  }
  if (!opts_.api_path.empty()) {
    try {
      start_api();
    } catch (const std::exception& e) {
      LOG_ERROR("daemon", "management API on %s: %s", opts_.api_path.c_str(), e.what());
      shutdown();
      return 1;
    }
  }
  signals_.async_wait([this](boost::system::error_code ec, int sig) {
    if (ec) return;
    LOG_INFO("daemon", "signal %d: shutting down", sig);
    stop();
  });
  io_.run();
  shutdown();
  return 0;
}

void Daemon::stop() {
  if (stopping_) return;
  stopping_ = true;
  // Each export ends its session first: rings stop, in-flight requests
  // complete and their status reaches the guest before we exit.
  for (auto& [id, e] : exports_) e->stop();
  if (api_) {
    boost::system::error_code ignore;
    api_->close(ignore);
    ::unlink(opts_.api_path.c_str());
  }
  if (metrics_) metrics_->stop();
  signals_.cancel();
  io_.stop();
}

void Daemon::shutdown() {
  // Attach/detach threads give up at once (every QMP wait polls the cancel
  // fd), so that a VMM that never answers cannot hold up the exit.
  if (qmp_cancel_.valid()) {
    uint64_t one = 1;
    (void)!::write(qmp_cancel_.get(), &one, sizeof one);
  }
  for (auto& t : vmm_ops_)
    if (t.joinable()) t.join();
  vmm_ops_.clear();
  exports_.clear();
#ifdef SLUICE_HAVE_DPDK
  uplinks_.clear();
#endif
  switches_.clear();  // after their ports
  vfio_.clear();  // after the exports: their sessions' memory leaves the IOMMU first
  for (auto& w : workers_) w->stop();
  workers_.clear();
  if (api_ && api_->is_open()) {
    boost::system::error_code ignore;
    api_->close(ignore);
    ::unlink(opts_.api_path.c_str());
  }
  api_.reset();
}

// ---------------------------------------------------------------- API

// One API connection (counted by the daemon: kMaxApiConns).
struct ApiConn : std::enable_shared_from_this<ApiConn> {
  static constexpr size_t kMaxLine = 1 << 20;  // a longer request drops the connection
  ApiConn(Daemon& d, unix_socket::socket s, ApiCaller who) : daemon(d), sock(std::move(s)), caller(who) {
    ++daemon.api_conns_;
  }
  ~ApiConn() { --daemon.api_conns_; }
  ApiConn(const ApiConn&) = delete;
  ApiConn& operator=(const ApiConn&) = delete;
  Daemon& daemon;
  unix_socket::socket sock;
  ApiCaller caller;  // fixed at accept (SO_PEERCRED)
  asio::streambuf in{kMaxLine};
  std::string out;

  void read() {
    auto self = shared_from_this();
    asio::async_read_until(sock, in, '\n', [self](boost::system::error_code ec, size_t n) {
      if (ec) return;  // closed, or a line over the limit: drop the connection
      std::string line(asio::buffers_begin(self->in.data()),
                       asio::buffers_begin(self->in.data()) + static_cast<long>(n));
      self->in.consume(n);
      handle_rpc_async(self->daemon, line, [self](std::string response) {
        self->out = std::move(response);
        if (self->out.empty()) {
          self->read();
          return;
        }
        self->out += '\n';
        asio::async_write(self->sock, asio::buffer(self->out),
                          [self](boost::system::error_code wec, size_t) {
                            if (!wec) self->read();
                          });
      }, self->caller);
    });
  }
};

namespace {

// A group by number, or by name from /etc/group (no NSS: the daemon links
// statically; a numeric gid works for any group source).
std::optional<gid_t> resolve_group(const std::string& g) {
  if (!g.empty() && g.find_first_not_of("0123456789") == std::string::npos && g.size() < 10)
    return static_cast<gid_t>(std::stoul(g));
  std::ifstream f("/etc/group");
  for (std::string line; std::getline(f, line);) {
    auto c1 = line.find(':');
    if (c1 == std::string::npos || line.substr(0, c1) != g) continue;
    auto c2 = line.find(':', c1 + 1);
    auto c3 = c2 == std::string::npos ? std::string::npos : line.find(':', c2 + 1);
    if (c3 == std::string::npos) return std::nullopt;
    try {
      return static_cast<gid_t>(std::stoul(line.substr(c2 + 1, c3 - c2 - 1)));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

// Whether process `pid` has `gid` among its supplementary groups.
bool in_groups(pid_t pid, gid_t gid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream ss(line.substr(7));
    for (unsigned long g; ss >> g;)
      if (static_cast<gid_t>(g) == gid) return true;
  }
  return false;
}

}  // namespace

void Daemon::start_api() {
  if (!opts_.api_group.empty()) {
    auto g = resolve_group(opts_.api_group);
    if (!g) throw std::runtime_error("unknown group '" + opts_.api_group + "' (not in /etc/group, not a number)");
    api_gid_ = *g;
  }
  clear_stale_socket(opts_.api_path);  // another daemon's live API stays its own
  unix_socket::endpoint ep(opts_.api_path);
  api_.emplace(io_);
  api_->open(ep.protocol());
  // Created with the final mode: no window in which anyone else can connect.
  mode_t old = ::umask(0177);
  boost::system::error_code ec;
  api_->bind(ep, ec);
  ::umask(old);
  if (ec) throw boost::system::system_error(ec);
  if (api_gid_ != static_cast<gid_t>(-1)) {
    if (::chown(opts_.api_path.c_str(), static_cast<uid_t>(-1), api_gid_) != 0 ||
        ::chmod(opts_.api_path.c_str(), 0660) != 0)
      throw std::runtime_error(std::string("cannot give the API socket to the group: ") + std::strerror(errno));
  }
  api_->listen();
  api_accept();
  if (opts_.socket_dirs.empty()) {
    auto slash = opts_.api_path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : opts_.api_path.substr(0, slash);
    confine_.add_socket_dir(dir);
  }
  LOG_INFO("daemon", "management API on %s (mode %s%s)", opts_.api_path.c_str(),
           api_gid_ == static_cast<gid_t>(-1) ? "0600" : "0660, group ", opts_.api_group.c_str());
}

bool Daemon::api_peer_allowed(int fd, std::string& why, ApiCaller& who) const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    why = std::string("cannot read the peer's credentials: ") + std::strerror(errno);
    return false;
  }
  if (cred.uid == 0 || cred.uid == ::geteuid()) {
    who = ApiCaller{};
    return true;
  }
  if (api_gid_ != static_cast<gid_t>(-1) && (cred.gid == api_gid_ || in_groups(cred.pid, api_gid_))) {
    who = ApiCaller::member(cred.uid);
    return true;
  }
  why = "permission denied: uid " + std::to_string(cred.uid) + " is neither the daemon's owner nor root" +
        (api_gid_ != static_cast<gid_t>(-1) ? " nor in group " + opts_.api_group : "");
  return false;
}

void Daemon::api_accept() {
  api_->async_accept([this](boost::system::error_code ec, unix_socket::socket s) {
    if (ec) {
      if (ec != asio::error::operation_aborted && api_ && api_->is_open())
        api_retry_.after_error(ec, [this] {
          if (api_ && api_->is_open()) api_accept();
        });
      return;
    }
    std::string why;
    ApiCaller who;
    const bool full = api_conns_ >= kMaxApiConns;
    if (full) why = "too many API connections (" + std::to_string(kMaxApiConns) + " open)";
    if (full || !api_peer_allowed(s.native_handle(), why, who)) {
      // Answered, then closed: a refused client learns why.
      LOG_LIMITED(api_log_limit_, LogLevel::kWarn, "daemon", "API: %s", why.c_str());
      std::string msg = json::serialize(json::object{
                            {"jsonrpc", "2.0"},
                            {"error", json::object{{"code", -32001}, {"message", why}}},
                            {"id", nullptr}}) +
                        "\n";
      (void)!::send(s.native_handle(), msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      // Half-close, then drain what the client sent until it hangs up (2 s
      // at most): closing with its request unread would reset the
      // connection and lose the answer.
      ::shutdown(s.native_handle(), SHUT_WR);
      struct Drain : std::enable_shared_from_this<Drain> {
        Drain(unix_socket::socket so, asio::io_context& io) : sock(std::move(so)), timer(io) {}
        unix_socket::socket sock;
        asio::steady_timer timer;
        char buf[512];
        size_t total = 0;
        void start() {
          auto self = shared_from_this();
          timer.expires_after(std::chrono::seconds(2));
          timer.async_wait([self](boost::system::error_code ec) {
            if (!ec) {
              boost::system::error_code ignore;
              self->sock.close(ignore);
            }
          });
          read();
        }
        void read() {
          auto self = shared_from_this();
          sock.async_read_some(asio::buffer(buf), [self](boost::system::error_code ec, size_t n) {
            self->total += n;
            if (ec || self->total > 65536) {
              boost::system::error_code ignore;
              self->sock.close(ignore);
              self->timer.cancel();
              return;
            }
            self->read();
          });
        }
      };
      std::make_shared<Drain>(std::move(s), io_)->start();
    } else {
      auto c = std::make_shared<ApiConn>(*this, std::move(s), who);
      c->read();
    }
    api_accept();
  });
}

std::string handle_rpc(Daemon& d, const std::string& request, const ApiCaller& by) {
  json::object resp;
  resp["jsonrpc"] = "2.0";
  json::value id = nullptr;
  auto fail = [&](int code, const std::string& msg) {
    resp["error"] = json::object{{"code", code}, {"message", msg}};
    resp["id"] = id;
    return json::serialize(resp);
  };
  json::value v;
  try {
    v = json::parse(request);
  } catch (const std::exception& e) {
    return fail(-32700, std::string("parse error: ") + e.what());
  }
  if (!v.is_object()) return fail(-32600, "invalid request: not an object");
  json::object& o = v.as_object();
  if (auto* i = o.if_contains("id")) id = *i;
  auto* method = o.if_contains("method");
  if (method == nullptr || !method->is_string()) return fail(-32600, "invalid request: no method");
  json::object params;
  if (auto* p = o.if_contains("params")) {
    if (!p->is_object()) return fail(-32602, "params must be an object");
    params = p->as_object();
  }
  auto str_param = [&](const char* key, bool required) -> std::string {
    auto* p = params.if_contains(key);
    if (p == nullptr) {
      if (required) throw std::invalid_argument(std::string("missing parameter '") + key + "'");
      return {};
    }
    if (!p->is_string()) throw std::invalid_argument(std::string("parameter '") + key + "' must be a string");
    return std::string(p->as_string());
  };
  std::string m(method->as_string());
  try {
    json::value result;
    if (m == "list") {
      result = d.list();
    } else if (m == "stats") {
      result = d.stats(str_param("id", false));
    } else if (m == "workers") {
      result = d.worker_stats();
    } else if (m == "vfio") {
      result = d.vfio_stats();
    } else if (m == "irq") {
      result = d.irq();
    } else if (m == "vmm-list") {
      result = d.vmm_list();
    } else if (m == "reload") {
      result = d.reload();
    } else if (m == "add-net") {
      NetSpec spec = parse_net_spec(str_param("spec", true));
      d.add_net(spec, by);
      result = json::object{{"id", spec.id}};
    } else if (m == "switch-create") {
      std::string name = str_param("name", true);
      uint64_t aging = 300;
      if (auto* a = params.if_contains("aging")) {
        if (!a->is_int64() || a->as_int64() <= 0) throw std::invalid_argument("parameter 'aging' must be a positive number");
        aging = static_cast<uint64_t>(a->as_int64());
      }
      d.create_switch(name, aging);
      result = json::object{{"name", name}};
    } else if (m == "switch-delete") {
      std::string name = str_param("name", true);
      d.delete_switch(name);
      result = json::object{{"name", name}};
    } else if ((m == "add-uplink" || m == "remove-uplink") && !by.owner) {
      // A DPDK device string opens files and devices (net_pcap's rx_pcap=,
      // a PCI address): the owner's to give.
      throw PermissionError(m + ": " + by.who() + " may not; only the daemon's owner");
    } else if (m == "add-uplink") {
      UplinkSpec spec = parse_uplink_spec(str_param("spec", true));
      d.add_uplink(spec);
      result = json::object{{"name", spec.name}};
    } else if (m == "remove-uplink") {
      std::string name = str_param("name", true);
      d.remove_uplink(name);
      result = json::object{{"name", name}};
    } else if (m == "switch-list") {
      result = d.switch_list();
    } else if (m == "mac-table") {
      result = d.mac_table(str_param("switch", true));
    } else if (m == "add-blk") {
      BlkSpec spec = parse_blk_spec(str_param("spec", true));
      d.add_blk(spec, by);
      result = json::object{{"id", spec.id}};
    } else if (m == "remove") {
      std::string rid = str_param("id", true);
      d.remove(rid);
      result = json::object{{"id", rid}};
    } else {
      return fail(-32601, "method not found: " + m);
    }
    if (!o.contains("id")) return {};  // a notification: no response
    resp["result"] = std::move(result);
    resp["id"] = id;
    return json::serialize(resp);
  } catch (const std::invalid_argument& e) {
    return fail(-32602, e.what());
  } catch (const PermissionError& e) {
    return fail(-32001, std::string("permission denied: ") + e.what());
  } catch (const SpecError& e) {
    return fail(-32602, std::string("bad spec: ") + e.what());
  } catch (const std::exception& e) {
    return fail(-32000, e.what());
  }
}

void handle_rpc_async(Daemon& d, const std::string& request, std::function<void(std::string)> done,
                      const ApiCaller& by) {
  json::value v;
  try {
    v = json::parse(request);
  } catch (const std::exception&) {
    return done(handle_rpc(d, request, by));  // it answers the parse error
  }
  const json::object* o = v.if_object();
  const json::value* method = o ? o->if_contains("method") : nullptr;
  if (method == nullptr || !method->is_string() ||
      (method->as_string() != "attach" && method->as_string() != "detach"))
    return done(handle_rpc(d, request, by));
  json::value id = o->contains("id") ? o->at("id") : json::value(nullptr);
  auto fail = [&](int code, const std::string& msg) {
    done(json::serialize(json::object{{"jsonrpc", "2.0"},
                                      {"error", json::object{{"code", code}, {"message", msg}}},
                                      {"id", id}}));
  };
  const json::value* params = o->if_contains("params");
  if (params == nullptr || !params->is_object()) return fail(-32602, "params must be an object");
  const json::object& p = params->as_object();
  auto str = [&](const char* key) -> const json::string* {
    const json::value* x = p.if_contains(key);
    return x && x->is_string() ? &x->as_string() : nullptr;
  };
  const json::string* eid = str("id");
  if (eid == nullptr) return fail(-32602, "missing string parameter 'id'");
  auto reply = [id, done](json::value result, std::string error) {
    if (!error.empty()) {
      done(json::serialize(json::object{{"jsonrpc", "2.0"},
                                        {"error", json::object{{"code", -32000}, {"message", error}}},
                                        {"id", id}}));
      return;
    }
    done(json::serialize(json::object{{"jsonrpc", "2.0"}, {"result", std::move(result)}, {"id", id}}));
  };
  if (method->as_string() == "attach") {
    const json::string* vmm = str("vmm");
    if (vmm == nullptr) return fail(-32602, "missing string parameter 'vmm' (qmp:/path/to/qmp.sock)");
    d.attach(std::string(*eid), std::string(*vmm), reply, by);
  } else {
    d.detach(std::string(*eid), reply);
  }
}

}  // namespace sluice::control
