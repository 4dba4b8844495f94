// sluiced: the Sluice data-plane daemon.
#include <sys/stat.h>

#include <cstdio>
#include <sstream>
#include <cstring>
#include <string>

#include "control/daemon.h"
#include "control/paths.h"
#include "control/spec.h"
#include "dataplane/base/log.h"
#include "dataplane/virtq/split_queue.h"

using namespace sluice;
using namespace sluice::control;

namespace {

const char kUsage[] = R"(usage: sluiced [options]

Serves virtio devices to VMMs over vhost-user. With no --blk or --net it serves a
built-in default: a 1 GiB sparse image in the data directory, exported as
vhost-user-blk, and prints a QEMU command line that attaches a guest to it.

  --blk SPEC        a vhost-user-blk export; repeatable. SPEC is a
                    comma-separated list (qemu-storage-daemon style):
                      path=SOCKET     vhost-user socket to create (required)
                      file=FILE       backing file or block device (required)
                      id=NAME         name for the API (default: socket name)
                      queues=N        number of request queues, 1..64 (default 1)
                      size=SIZE       create/grow FILE to SIZE, e.g. 8G (sparse)
                      ro              read-only export
                      serial=TEXT     disk serial (GET_ID), up to 20 characters
                      queue-size=N    largest ring accepted, 2..1024 (default 256)
                      direct=on|off   O_DIRECT where the file and request allow it (default on)
                      null            no file: requests complete at once (with size=),
                                      for measuring the data path (like QEMU's null-co)
                      vfio=ADDR       no file: a virtio-blk device bound to vfio-pci
                                      (e.g. 0000:00:05.0) serves the disk; the workers
                                      pass it the guest's descriptors (zero copy)
                      offload=on      with vfio=: the device runs the queues itself,
                                      its interrupts go straight to the VMM's call fds
                      max-memory=SIZE guest memory one front-end may map (default 1T)
                      max-regions=N   its memory regions, 1..509 (default 509)
                    e.g. --blk id=vm1,path=/run/sluice/vm1.sock,file=/srv/vm1.img,queues=2,size=8G
  --net SPEC        a vhost-user-net port on a switch; repeatable:
                      path=SOCKET     vhost-user socket to create (required)
                      id=NAME         name for the API (default: socket name)
                      switch=NAME     the switch to join, created if needed (default sw0)
                      queues=N        queue pairs, 1..256 (default 1)
                      mac=MAC         the device's MAC (default 52:54:00 + a hash of the id)
                      mtu=N           68..9000 (default 1500)
                      queue-size=N    largest ring accepted (default 1024)
                      mode=M          switch (default): frames go through the switch;
                                      benchmark modes: reflect (MACs swapped, sent
                                      back), sink (counted, dropped), source (the
                                      guest's rx queues filled with generated frames)
                      frame=N         mode=source: frame bytes, 60..MTU+14 (default 64)
                      mac-lock=on|off the port sends only with its own MAC, which no
                                      other port may use (default on)
                      max-macs=N      source MACs learned on the port, 0..4096 (default 64)
                      flood-rate=N    flooded frames (broadcast, multicast, unknown
                                      destination) per second (default 10000; 0: no limit)
                      max-memory=SIZE, max-regions=N   as for --blk
                    e.g. --net id=vm1,path=/run/sluice/vm1-net.sock,switch=br0,queues=2
  --uplink SPEC     a DPDK ethdev port on a switch; repeatable:
                      switch=NAME,[name=NAME,][queue-size=N,][max-macs=N (default 1024),]
                      [flood-rate=N (default 0: no limit),]dpdk=DEVARGS
                    DEVARGS (last: it may hold commas) is any EAL device string,
                    e.g. dpdk=net_tap0,iface=sl0 or dpdk=0000:00:05.0 (vfio-pci)
  --dpdk-args ARGS  extra EAL arguments (space-separated) for the uplinks, e.g.
                    "-a 0000:00:05.0"; default EAL: --in-memory, no telemetry,
                    --no-huge -m 256 when no hugepages are free
  --config FILE     read options and exports from FILE (JSON, see
                    docs/OPERATIONS.md); sluicectl reload re-reads it. Options
                    given on the command line after it override it
  --vfio-group N    open VFIO group N (/dev/vfio/N) in a type1 container and keep
                    every session's guest memory mapped in its IOMMU (IOVA =
                    guest physical address); repeatable, one container each
  --api PATH        management API socket (JSON-RPC 2.0; default %s)
  --api-group G     also let members of group G (name or number) use the API:
                    the socket becomes mode 0660 with that group (default:
                    0600, the daemon's owner and root only; peers are
                    checked with SO_PEERCRED either way). A member is
                    confined (docs/SECURITY.md): its sockets only directly in
                    a --socket-dir, its files only beneath a --file-dir; no
                    vfio=, no uplinks, only QMP sockets it owns
  --socket-dir DIR  where members' sockets may go (repeatable; default: the
                    API socket's directory)
  --file-dir DIR    beneath which members' backing files may lie (repeatable;
                    default: none)
  --no-api          no management API
  --metrics H:P     serve Prometheus metrics at http://H:P/metrics (e.g.
                    127.0.0.1:9310; an IP address, port 0 picks one)
  --workers N       data-plane worker threads (default 1)
  --cpus LIST       pin workers to these CPUs, e.g. 2,3
  --poll-us N       busy-poll N microseconds after the last request before
                    sleeping on the kick eventfds (default 50; 0 = never poll)
  --stop-timeout MS how long a stopping queue waits for its requests (a hung
                    file or device) before they are abandoned and the
                    front-end's session ended (default 5000)
  --busy-time       workers keep their busy time (poll loops that found work;
                    `sluicectl workers`, metrics); costs a time-stamp read per
                    loop, a few percent at full load
  --no-cache-demote completions on plain split rings stay in the worker's
                    caches, not demoted to the shared cache (CLDEMOTE) for
                    the driver to read; for a driver on the worker CPU's
                    SMT sibling
  --data-dir DIR    where the default image lives (default %s)
  --log-level L     error, warn, info (default) or debug
  --help            this text
)";

std::vector<int> parse_cpus(const std::string& s) {
  std::vector<int> v;
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    std::string item = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 4)
      throw SpecError("--cpus: expected a comma-separated list of CPU numbers");
    v.push_back(std::stoi(item));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return v;
}

int mkdirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i)
    if (i == path.size() || path[i] == '/') {
      std::string p = path.substr(0, i);
      if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return -1;
    }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  DaemonOptions opts;
  opts.api_path = default_api_path();
  std::string data_dir = default_data_dir();
  bool no_api = false;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw SpecError(a + " needs a value");
        return argv[++i];
      };
      if (a == "--help" || a == "-h") {
        std::printf(kUsage, default_api_path().c_str(), default_data_dir().c_str());
        return 0;
      } else if (a == "--blk") {
        opts.blk.push_back(parse_blk_spec(value()));
      } else if (a == "--net") {
        opts.net.push_back(parse_net_spec(value()));
      } else if (a == "--uplink") {
        opts.uplinks.push_back(parse_uplink_spec(value()));
      } else if (a == "--dpdk-args") {
        std::istringstream in(value());
        for (std::string w; in >> w;) opts.dpdk_args.push_back(w);
      } else if (a == "--api") {
        opts.api_path = value();
      } else if (a == "--config") {
        try {
          opts = load_config(value(), opts);
        } catch (const std::runtime_error& e) {
          throw SpecError(e.what());
        }
      } else if (a == "--metrics") {
        opts.metrics = value();
      } else if (a == "--api-group") {
        opts.api_group = value();
      } else if (a == "--socket-dir" || a == "--file-dir") {
        std::string v = value();
        if (v.empty() || v[0] != '/') throw SpecError(a + ": an absolute directory path");
        (a == "--socket-dir" ? opts.socket_dirs : opts.file_dirs).push_back(v);
      } else if (a == "--no-api") {
        no_api = true;
      } else if (a == "--vfio-group") {
        std::string v = value();
        if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos)
          throw SpecError("--vfio-group: expected a group number (see /sys/kernel/iommu_groups)");
        opts.vfio_groups.push_back(std::stoi(v));
      } else if (a == "--workers") {
        std::string v = value();
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 3 ||
            std::stoi(v) < 1)
          throw SpecError("--workers: expected a number >= 1");
        opts.workers = static_cast<unsigned>(std::stoi(v));
      } else if (a == "--stop-timeout") {
        std::string v = value();
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 6 || std::stoul(v) < 10)
          throw SpecError("--stop-timeout: milliseconds, 10..999999");
        opts.stop_timeout_ms = static_cast<unsigned>(std::stoul(v));
      } else if (a == "--busy-time") {
        opts.busy_time = true;
      } else if (a == "--no-cache-demote") {
        sluice::virtq::SplitQueue::set_cache_demote(false);
      } else if (a == "--poll-us") {
        std::string v = value();
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 7)
          throw SpecError("--poll-us: expected a number of microseconds");
        opts.poll_us = static_cast<unsigned>(std::stoul(v));
      } else if (a == "--cpus") {
        opts.cpus = parse_cpus(value());
      } else if (a == "--data-dir") {
        data_dir = value();
      } else if (a == "--log-level") {
        std::string l = value();
        if (l == "error") set_log_level(LogLevel::kError);
        else if (l == "warn") set_log_level(LogLevel::kWarn);
        else if (l == "info") set_log_level(LogLevel::kInfo);
        else if (l == "debug") set_log_level(LogLevel::kDebug);
        else throw SpecError("--log-level: error, warn, info or debug");
      } else {
        throw SpecError("unknown option '" + a + "' (see --help)");
      }
    }
  } catch (const SpecError& e) {
    std::fprintf(stderr, "sluiced: %s\n", e.what());
    return 2;
  }
  if (no_api) opts.api_path.clear();
  bool builtin = opts.blk.empty() && opts.net.empty() && opts.uplinks.empty();
  if (builtin) {
    std::string run = default_run_dir();
    if (mkdirs(data_dir) != 0 || mkdirs(run) != 0) {
      std::fprintf(stderr, "sluiced: cannot create %s or %s: %s\n", data_dir.c_str(), run.c_str(),
                   std::strerror(errno));
      return 1;
    }
    BlkSpec s;
    s.id = "default";
    s.path = run + "/default.sock";
    s.file = data_dir + "/default.img";
    s.size = 1ull << 30;
    s.serial = "sluice-default";
    opts.blk.push_back(s);
  } else if (!opts.api_path.empty()) {
    auto slash = opts.api_path.find_last_of('/');
    if (slash != std::string::npos && slash > 0) mkdirs(opts.api_path.substr(0, slash));
  }
  if (!opts.api_path.empty() && opts.api_path.size() >= 108) {
    std::fprintf(stderr, "sluiced: --api path too long for a unix socket\n");
    return 2;
  }
  Daemon d(opts);
  if (builtin) {
    const BlkSpec& s = opts.blk[0];
    std::printf(
        "sluiced: serving %s as vhost-user-blk on %s\n"
        "Attach a guest with, for example:\n"
        "  qemu-system-x86_64 -machine q35 -accel kvm -accel tcg -m 1G \\\n"
        "    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\\n"
        "    -chardev socket,id=sluice0,path=%s,reconnect=1 \\\n"
        "    -device vhost-user-blk-pci,chardev=sluice0,num-queues=1 \\\n"
        "    -kernel vmlinuz -initrd initrd.img -append console=ttyS0 -nographic\n"
        "Management API: %s (try: sluicectl stats)\n",
        s.file.c_str(), s.path.c_str(), s.path.c_str(),
        opts.api_path.empty() ? "off" : opts.api_path.c_str());
    std::fflush(stdout);
  }
  return d.run();
}
