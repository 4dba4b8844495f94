// The sluiced daemon: one control thread running a Boost.Asio io_context
// (vhost-user listening sockets and sessions, the management API), and the
// data-plane workers. Exceptions are allowed here (control/), never below.
#pragma once

#include <boost/asio.hpp>
#include <boost/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "control/accept_retry.h"
#include "control/confine.h"
#include "control/metrics.h"
#include "control/spec.h"
#include "control/vmm.h"
#include "dataplane/blk/blk_device.h"
#include "dataplane/net/net_device.h"
#include "dataplane/net/switch.h"
#ifdef SLUICE_HAVE_DPDK
#include "dataplane/net/dpdk_uplink.h"
#endif
#include "dataplane/worker/worker.h"
#include "vfio/container.h"
#include "vfio/dma_mapper.h"
#include "vfio/offload.h"
#include "vfio/passthrough_blk.h"
#include "vhost/session.h"

namespace sluice::control {

namespace asio = boost::asio;
using unix_socket = asio::local::stream_protocol;

class Daemon;

// A virtio-blk device behind VFIO serving an export: its own container (the
// session's memory is mapped there, IOVA = guest physical address), group,
// device, and either the offload model (offload=on: the device runs the
// queues) or the pass-through backend (Sluice's workers feed the device the
// guest's descriptors).
struct VfioParts {
  std::unique_ptr<vfio::Container> container;
  std::unique_ptr<vfio::Group> group;
  std::unique_ptr<vfio::Device> device;
  std::unique_ptr<vfio::DmaMapper> mapper;
  std::unique_ptr<vfio::VirtioOffloadDevice> virtio;          // offload=on
  std::unique_ptr<vfio::PassthroughBlkDevice> passthrough;    // offload=off
};

// One vhost-user export: a listening socket, the session of the front-end
// connected to it (one at a time), and the device model behind it. Derived
// classes own the device; they call stop() in their destructor, before it
// goes.
class Export {
 public:
  Export(Daemon& d, std::string id, std::string path, ExportLimits limits);
  virtual ~Export();
  // Binds and listens (a stale socket at the path is replaced, nothing
  // else); a member's socket is chowned to it. Throws on failure.
  void start(const ApiCaller& by = ApiCaller{});
  void stop();   // ends the session (queues drained), closes and unlinks the socket

  const std::string& id() const { return id_; }
  const std::string& path() const { return path_; }
  bool connected() const { return conn_.has_value(); }
  virtual const char* type() const = 0;  // "blk", "net"
  virtual uint16_t queues() const = 0;   // what a VMM attaches (queues, or queue pairs)
  virtual boost::json::object describe() const = 0;
  virtual boost::json::object stats() const = 0;
  // One entry per queue: what signals the guest when it completes.
  virtual boost::json::array irq() const;
  virtual void metrics(MetricsText& m) const;

 protected:
  virtual VirtioDevice& device() = 0;
  // A VFIO container of the export's own that must see the session's memory.
  virtual vfio::DmaMapper* own_mapper() { return nullptr; }
  // connected, sessions, refused_messages
  void describe_session(boost::json::object& o) const;
  // The guest pages of the current session that faulted (SIGBUS survived:
  // dataplane/memory/guest_fault.h), each {gpa, size, cause}.
  boost::json::array poisoned_pages() const;
  bool queue_running(uint16_t i) const { return session_ && session_->queue_running(i); }
  // The number of virtqueues the session has.
  uint16_t virtqueues() const;

  std::unique_ptr<vhost::Session> session_;

 private:
  void accept();
  void wait_message();
  void on_readable();
  void end_session(const char* why);

  std::string id_, path_;
  unix_socket::acceptor acceptor_;
  AcceptRetry accept_retry_;
  LogLimit log_limit_;  // a peer connecting in a loop costs a few lines a second
  ExportLimits limits_;  // what one session may map
  std::optional<unix_socket::socket> conn_;
  // The front-end's message being assembled (it may arrive in pieces).
  vhost::MessageReader reader_;
  static constexpr int kMessagesPerWake = 16;
  // Keeps this session's guest memory mapped in the daemon's VFIO containers.
  vfio::GuestMemoryDma dma_;
  Daemon& daemon_;
  uint64_t sessions_ = 0;
  uint64_t refused_messages_ = 0;
  uint32_t abandoned_seen_ = 0;  // device().abandoned_queues() when last looked at
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // false once destroyed
};

// A vhost-user-blk export: Sluice's blk model on a worker, or a device behind
// VFIO that runs the queues itself (offload) or is fed by the workers.
class BlkExport final : public Export {
 public:
  BlkExport(Daemon& d, BlkSpec spec, std::unique_ptr<blk::BlkDevice> dev,
            std::unique_ptr<VfioParts> vfio = nullptr);
  ~BlkExport() override;
  const BlkSpec& spec() const { return spec_; }
  const char* type() const override { return "blk"; }
  uint16_t queues() const override;
  boost::json::object describe() const override;
  boost::json::object stats() const override;
  boost::json::array irq() const override;
  void metrics(MetricsText& m) const override;

 private:
  VirtioDevice& device() override;
  vfio::DmaMapper* own_mapper() override { return vfio_dev_ ? vfio_dev_->mapper.get() : nullptr; }
  BlkSpec spec_;
  std::unique_ptr<blk::BlkDevice> dev_;       // software data plane, or
  std::unique_ptr<VfioParts> vfio_dev_;       // a virtio device behind VFIO (offload or backend)
};

// A vhost-user-net export: a port on one of the daemon's switches.
class NetExport final : public Export {
 public:
  NetExport(Daemon& d, NetSpec spec, std::unique_ptr<net::NetDevice> dev);
  ~NetExport() override;
  const NetSpec& spec() const { return spec_; }
  const char* type() const override { return "net"; }
  uint16_t queues() const override { return spec_.queues; }
  boost::json::object describe() const override;
  boost::json::object stats() const override;
  void metrics(MetricsText& m) const override;

 private:
  VirtioDevice& device() override { return *dev_; }
  NetSpec spec_;
  std::unique_ptr<net::NetDevice> dev_;
};

// A VFIO container with one group, and the mapper that keeps every
// session's guest memory in its IOMMU domain (IOVA = guest physical address).
struct VfioDomain {
  int group = -1;
  std::unique_ptr<vfio::Container> container;
  std::unique_ptr<vfio::Group> grp;
  std::unique_ptr<vfio::DmaMapper> mapper;
};

struct DaemonOptions {
  std::vector<BlkSpec> blk;
  std::vector<NetSpec> net;
  std::vector<UplinkSpec> uplinks;
  std::vector<std::string> dpdk_args;  // EAL arguments (--dpdk-args), used when the first uplink starts
  std::string config;        // the config file these came from (reload re-reads it); empty: none
  std::vector<std::string> config_exports;  // ids of the exports the config file defines
  std::vector<int> vfio_groups;      // --vfio-group: one container each
  vfio::Kernel* vfio_kernel = nullptr;  // the syscall seam (tests: a fake); null = the kernel
  std::string api_path;      // empty: no API
  // Members of this group (name from /etc/group, or a number) may use the
  // API too: the socket becomes mode 0660 with that group. Empty: owner and
  // root only (0600).
  std::string api_group;
  // Where an --api-group member's paths may go (docs/SECURITY.md):
  // sockets directly in one of socket_dirs (default: the API socket's
  // directory), backing files beneath one of file_dirs (default: none).
  std::vector<std::string> socket_dirs;
  std::vector<std::string> file_dirs;
  unsigned workers = 1;
  std::vector<int> cpus;     // pin worker i to cpus[i % size]
  unsigned poll_us = 50;     // busy-poll this long after the last work before sleeping
  bool busy_time = false;    // workers account their busy time (--busy-time)
  // How long a queue's stop waits for its requests (a hung file or device)
  // before they are abandoned and the session ended (--stop-timeout).
  unsigned stop_timeout_ms = 5000;
  std::string metrics;       // "HOST:PORT" for Prometheus metrics over HTTP; empty: none
};

class Daemon {
 public:
  explicit Daemon(DaemonOptions opts);
  ~Daemon();
  // Starts workers, exports and the API; runs until SIGINT/SIGTERM or stop().
  int run();
  void stop();

  asio::io_context& io() { return io_; }
  // Adds/removes an export at runtime. Throw std::runtime_error with a
  // message a user can act on (PermissionError when `by` may not).
  void add_blk(const BlkSpec& spec, const ApiCaller& by = ApiCaller{});
  void add_net(const NetSpec& spec, const ApiCaller& by = ApiCaller{});
  void remove(const std::string& id);
  // Switches: created on demand by add_net, or explicitly; deleted only when
  // they have no ports.
  net::Switch& create_switch(const std::string& name, uint64_t aging_s = 300);
  void delete_switch(const std::string& name);
  boost::json::array switch_list() const;
  boost::json::array mac_table(const std::string& sw) const;
  // DPDK ethdev uplinks (throw when built without DPDK).
  void add_uplink(const UplinkSpec& spec);
  void remove_uplink(const std::string& name);
  boost::json::array list() const;
  boost::json::value stats(const std::string& id) const;
  boost::json::array worker_stats() const;
  boost::json::array vfio_stats() const;
  boost::json::object irq() const;
  // The Prometheus text the metrics endpoint serves.
  std::string metrics_text() const;
  // Re-reads the config file: exports added, removed or changed there are
  // added, removed or replaced; unchanged ones are not touched, nor are
  // exports added through the API. Settings that need a restart are listed.
  boost::json::object reload();
  // VMM attach (QMP). Run off the control thread; `done` is called on it
  // with the result, or with an error message.
  using Done = std::function<void(boost::json::value result, std::string error)>;
  void attach(const std::string& id, const std::string& vmm, Done done, const ApiCaller& by = ApiCaller{});
  void detach(const std::string& id, Done done);
  boost::json::array vmm_list() const;
  // The metrics endpoint's port (0 when it is off).
  uint16_t metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // Opens the VFIO containers named in the options (throws with a message a
  // user can act on). run() calls it before any export starts.
  void open_vfio();
  // An export whose queues a virtio device behind VFIO runs (offload=on).
  void add_offload(const BlkSpec& spec);
  std::vector<vfio::DmaMapper*> dma_mappers();

 private:
  void start_api();
  void api_accept();
  // SO_PEERCRED: root, the daemon's own uid, or (with api_group) a member;
  // `who` says which.
  bool api_peer_allowed(int fd, std::string& why, ApiCaller& who) const;
  void shutdown();

  DaemonOptions opts_;
  asio::io_context io_;
  asio::signal_set signals_{io_, SIGINT, SIGTERM};
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<VfioDomain> vfio_;
  void check_new_export(const std::string& id, const std::string& path) const;
  std::map<std::string, std::unique_ptr<Export>> exports_;
  std::map<std::string, std::unique_ptr<net::Switch>> switches_;
#ifdef SLUICE_HAVE_DPDK
  std::map<std::string, std::unique_ptr<net::DpdkUplink>> uplinks_;
#endif
#ifdef SLUICE_HAVE_DPDK
  bool eal_started_ = false;
#endif
  std::optional<unix_socket::acceptor> api_;
  AcceptRetry api_retry_{io_, "API"};
  // Open API connections (each holds an fd and a buffer): capped, so that
  // one client cannot take every fd the daemon has.
  static constexpr unsigned kMaxApiConns = 64;
  unsigned api_conns_ = 0;
  LogLimit api_log_limit_;
  friend struct ApiConn;
  std::unique_ptr<MetricsServer> metrics_;
  std::map<std::string, Attachment> attached_;  // export id -> where it is attached
  std::set<std::string> busy_;                   // exports with an attach/detach under way
  std::vector<std::thread> vmm_ops_;
  UniqueFd qmp_cancel_;  // an eventfd: written at shutdown, every QMP wait ends
  gid_t api_gid_ = static_cast<gid_t>(-1);
  Confinement confine_;
  std::string confine_error_;  // a configured directory that does not resolve: run() refuses to start
  bool stopping_ = false;
};

// The config file (docs/OPERATIONS.md): JSON with optional "api",
// "api_group", "metrics", "workers", "cpus", "poll_us", "vfio_groups" and
// "exports": [{"blk": "SPEC"}...]. Throws std::runtime_error (which key, why).
DaemonOptions load_config(const std::string& path, DaemonOptions base = {});

// Handles one JSON-RPC 2.0 request text; returns the response text (empty
// for a notification). Never throws.
// `by`: who asks (a member of --api-group is confined: confine.h).
std::string handle_rpc(Daemon& d, const std::string& request, const ApiCaller& by = ApiCaller{});
// The same, for methods that take time (attach, detach): `done` receives the
// response text later, on the control thread. Others answer at once.
void handle_rpc_async(Daemon& d, const std::string& request, std::function<void(std::string)> done,
                      const ApiCaller& by = ApiCaller{});

}  // namespace sluice::control
