// sluicectl: talks to sluiced's management API (JSON-RPC 2.0, one request per
// line over a unix socket).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/json.hpp>

#include <cstdio>
#include <cstring>
#include <string>

#include "control/paths.h"
#include "control/qmp.h"
#include "control/spec.h"

namespace json = boost::json;
using sluice::control::default_api_path;
using sluice::control::format_size;

namespace {

const char kUsage[] = R"(usage: sluicectl [--api PATH] [--json] COMMAND

  list                 exports and whether a front-end is connected
  stats [ID]           per-queue counters (requests, bytes, errors, used-ring batches)
  workers              data-plane workers: poll loops run and times they slept
  vfio                 VFIO containers (sluiced --vfio-group): IOMMU, IOVA ranges,
                       mappings in use, map/unmap calls made
  irq                  every queue's interrupt: a device vector bound to the VMM's
                       call fd (IRQ-bypass eligible) or a software signal; and
                       whether this machine can post device interrupts to guests
  add-blk SPEC         add a vhost-user-blk export (SPEC as for sluiced --blk)
  add-net SPEC         add a vhost-user-net port (SPEC as for sluiced --net)
  add-uplink SPEC      add a DPDK uplink (SPEC as for sluiced --uplink)
  remove-uplink NAME
  switch list          switches, their ports and per-port counters
  switch create NAME [--aging SECONDS]
  switch delete NAME   (only when it has no ports)
  switch macs NAME     the switch's MAC table (address, port, age)
  attach ID --vmm qmp:PATH
                       hot-plug export ID into a running QEMU (its QMP socket); the
                       guest's memory must be shared (memfd/hugetlbfs, share=on)
  detach ID            unplug it again (waits for the guest to let go)
  vmm list             VMMs and what is attached to each
  reload               re-read sluiced's --config file: changed exports are
                       replaced, unchanged ones untouched
  run-guest --kernel K --initrd I [--append TEXT] [--mem SIZE] [--qmp PATH]
            [--console FILE] [--attach ID]... [--accel tcg|kvm] [--wait]
                       start a QEMU guest with shared memory (memfd, share=on) and a
                       QMP socket, paused; attach the named exports; then let it run.
                       --wait: wait for the guest to power off (exit status: QEMU's)
  remove ID            remove an export (its front-end is disconnected)

  --api PATH           the daemon's API socket (default %s)
  --json               print the raw JSON result
)";

// A port's counters: the guest's tx/rx, then every drop reason seen.
void print_port(const std::string& title, const json::object& o) {
  auto u = [&](const char* k) { return static_cast<unsigned long long>(o.at(k).to_number<uint64_t>()); };
  std::printf("%s: tx %llu pkts / %s, rx %llu pkts / %s", title.c_str(), u("tx_packets"),
              format_size(u("tx_bytes")).c_str(), u("rx_packets"), format_size(u("rx_bytes")).c_str());
  std::string drops;
  for (auto& d : o.at("drops").as_object()) {
    uint64_t n = d.value().to_number<uint64_t>();
    if (n != 0) drops += (drops.empty() ? "" : ", ") + std::string(d.key()) + " " + std::to_string(n);
  }
  std::printf("; drops: %s", drops.empty() ? "none" : drops.c_str());
  if (o.contains("learn_refused")) {
    auto& r = o.at("learn_refused").as_object();
    uint64_t pl = r.at("port_limit").to_number<uint64_t>(), tf = r.at("table_full").to_number<uint64_t>();
    if (pl + tf != 0)
      std::printf("; not learned: port_limit %llu, table_full %llu", static_cast<unsigned long long>(pl),
                  static_cast<unsigned long long>(tf));
  }
  if (o.contains("security")) {
    auto& s = o.at("security").as_object();
    std::printf("\n    MACs learned: %llu of at most %llu, %s, flood rate %s", u("macs_learned"),
                static_cast<unsigned long long>(s.at("max_macs").to_number<uint64_t>()),
                s.contains("locked_mac") ? ("locked to " + std::string(s.at("locked_mac").as_string())).c_str()
                                         : "not locked",
                s.at("flood_rate").to_number<uint64_t>() == 0
                    ? "unlimited"
                    : (std::to_string(s.at("flood_rate").to_number<uint64_t>()) + "/s").c_str());
  }
  std::printf("\n");
}

// One line per guest page that faulted (an export's poisoned_pages).
void print_poisoned(const json::object& o) {
  if (!o.contains("poisoned_pages")) return;
  for (auto& v : o.at("poisoned_pages").as_array()) {
    auto& p = v.as_object();
    std::printf("  poisoned guest page: gpa 0x%llx, %llu bytes (%s): requests touching it fail\n",
                static_cast<unsigned long long>(p.at("gpa").to_number<uint64_t>()),
                static_cast<unsigned long long>(p.at("size").to_number<uint64_t>()),
                std::string(p.at("cause").as_string()).c_str());
  }
}

int call(const std::string& path, const std::string& method, json::object params, json::value& out) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    std::fprintf(stderr, "sluicectl: API path too long\n");
    return 2;
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::fprintf(stderr, "sluicectl: cannot reach sluiced at %s: %s\n", path.c_str(), std::strerror(errno));
    ::close(fd);
    return 1;
  }
  json::object req{{"jsonrpc", "2.0"}, {"id", 1}, {"method", method}, {"params", std::move(params)}};
  std::string line = json::serialize(req) + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    std::fprintf(stderr, "sluicectl: write failed\n");
    ::close(fd);
    return 1;
  }
  std::string resp;
  char buf[4096];
  while (resp.find('\n') == std::string::npos) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  json::value v;
  try {
    v = json::parse(resp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluicectl: bad answer from sluiced: %s\n", e.what());
    return 1;
  }
  if (auto* err = v.as_object().if_contains("error")) {
    std::fprintf(stderr, "sluicectl: %s\n", std::string(err->as_object().at("message").as_string()).c_str());
    return 1;
  }
  out = v.as_object().at("result");
  return 0;
}

// run-guest: QEMU started paused (-S) so that the attached exports are in
// place before the guest's firmware looks at the PCI bus; then "cont".
int run_guest(const std::string& api, int argc, char** argv, int i) {
  std::string kernel, initrd, append = "console=ttyS0 quiet panic=-1", mem = "512M", console, accel = "tcg";
  std::string qmp = "/tmp/sluice-guest-" + std::to_string(::getpid()) + ".qmp";
  std::vector<std::string> attach;
  bool wait = false;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--kernel") kernel = val();
      else if (a == "--initrd") initrd = val();
      else if (a == "--append") append = val();
      else if (a == "--mem") mem = val();
      else if (a == "--qmp") qmp = val();
      else if (a == "--console") console = val();
      else if (a == "--attach") attach.push_back(val());
      else if (a == "--accel") accel = val();
      else if (a == "--wait") wait = true;
      else throw std::invalid_argument("unknown run-guest option " + a);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sluicectl: %s\n", e.what());
      return 2;
    }
  }
  if (kernel.empty() || initrd.empty()) {
    std::fprintf(stderr, "sluicectl: run-guest needs --kernel and --initrd\n");
    return 2;
  }
  if (accel != "tcg" && accel != "kvm") {
    std::fprintf(stderr, "sluicectl: --accel tcg or kvm\n");
    return 2;
  }
  ::unlink(qmp.c_str());
  std::vector<std::string> args = {"qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-smp", "2", "-m", mem,
                                   "-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
                                   "-machine", "pc,memory-backend=mem", "-nographic", "-no-reboot", "-nic", "none",
                                   "-qmp", "unix:" + qmp + ",server=on,wait=off", "-S",
                                   "-kernel", kernel, "-initrd", initrd, "-append", append};
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("sluicectl: fork");
    return 1;
  }
  if (pid == 0) {
    if (!console.empty()) {
      int fd = ::open(console.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) _exit(126);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    std::vector<char*> av;
    for (auto& x : args) av.push_back(x.data());
    av.push_back(nullptr);
    ::execvp(av[0], av.data());
    _exit(127);
  }
  auto fail = [&](const std::string& why) {
    std::fprintf(stderr, "sluicectl: %s\n", why.c_str());
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    return 1;
  };
  // QEMU creates the QMP socket at start-up.
  struct stat st;
  for (int t = 0; t < 100 && ::stat(qmp.c_str(), &st) != 0; ++t) {
    int status;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      std::fprintf(stderr, "sluicectl: QEMU exited at start (is qemu-system-x86_64 installed?%s)\n",
                   console.empty() ? "" : (" see " + console).c_str());
      return 1;
    }
    ::usleep(50000);
  }
  std::printf("guest: QEMU pid %d, QMP %s%s%s\n", pid, qmp.c_str(), console.empty() ? "" : ", console ",
              console.c_str());
  for (const std::string& id : attach) {
    json::value out;
    if (call(api, "attach", json::object{{"id", id}, {"vmm", "qmp:" + qmp}}, out) != 0)
      return fail("attaching " + id + " failed; guest stopped");
    std::printf("guest: attached %s as %s\n", id.c_str(),
                std::string(out.as_object().at("device").as_string()).c_str());
  }
  try {
    sluice::control::QmpClient q(qmp);
    q.execute("cont");
  } catch (const std::exception& e) {
    return fail(std::string("cannot start the guest: ") + e.what());
  }
  std::printf("guest: running%s\n", wait ? "; waiting for it to power off" : "");
  std::fflush(stdout);
  if (!wait) return 0;
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::unlink(qmp.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string api = default_api_path();
  bool raw = false;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--api" && i + 1 < argc) {
      api = argv[++i];
    } else if (a == "--json") {
      raw = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(kUsage, default_api_path().c_str());
      return 0;
    } else {
      break;
    }
  }
  if (i >= argc) {
    std::fprintf(stderr, kUsage, default_api_path().c_str());
    return 2;
  }
  std::string cmd = argv[i++];
  if (cmd == "run-guest") return run_guest(api, argc, argv, i);
  json::object params;
  std::string method = cmd;
  if (cmd == "list") {
  } else if (cmd == "stats") {
    if (i < argc) params["id"] = argv[i++];
  } else if (cmd == "workers") {
  } else if (cmd == "vfio") {
  } else if (cmd == "irq") {
  } else if ((cmd == "add-blk" || cmd == "add-net" || cmd == "add-uplink") && i < argc) {
    params["spec"] = argv[i++];
  } else if (cmd == "remove-uplink" && i < argc) {
    params["name"] = argv[i++];
  } else if (cmd == "switch" && i < argc) {
    std::string sub = argv[i++];
    if (sub == "list") {
      method = "switch-list";
    } else if ((sub == "create" || sub == "delete") && i < argc) {
      method = "switch-" + sub;
      params["name"] = argv[i++];
      if (sub == "create" && i + 1 < argc && std::string(argv[i]) == "--aging") {
        params["aging"] = std::atoll(argv[i + 1]);
        i += 2;
      }
    } else if (sub == "macs" && i < argc) {
      method = "mac-table";
      params["switch"] = argv[i++];
    } else {
      std::fprintf(stderr, "sluicectl: switch list | create NAME [--aging S] | delete NAME | macs NAME\n");
      return 2;
    }
  } else if (cmd == "attach" && i < argc) {
    params["id"] = argv[i++];
    if (i + 1 < argc && std::string(argv[i]) == "--vmm") {
      params["vmm"] = argv[i + 1];
      i += 2;
    } else if (i < argc && std::string(argv[i]).rfind("--vmm=", 0) == 0) {
      params["vmm"] = std::string(argv[i] + 6);
      ++i;
    } else {
      std::fprintf(stderr, "sluicectl: attach ID --vmm qmp:/path/to/qmp.sock\n");
      return 2;
    }
  } else if (cmd == "detach" && i < argc) {
    params["id"] = argv[i++];
  } else if (cmd == "reload") {
  } else if (cmd == "vmm" && i < argc && std::string(argv[i]) == "list") {
    ++i;
    method = "vmm-list";
  } else if (cmd == "remove" && i < argc) {
    params["id"] = argv[i++];
  } else {
    std::fprintf(stderr, "sluicectl: unknown or incomplete command '%s' (see --help)\n", cmd.c_str());
    return 2;
  }
  json::value out;
  int rc = call(api, method, params, out);
  if (rc != 0) return rc;
  if (raw) {
    std::printf("%s\n", json::serialize(out).c_str());
    return 0;
  }
  if (cmd == "list") {
    std::printf("%-12s %-16s %-10s %-7s %-9s %s\n", "ID", "TYPE", "SIZE", "QUEUES", "STATE", "SOCKET / FILE");
    for (auto& e : out.as_array()) {
      auto& o = e.as_object();
      if (o.at("type").as_string() == "vhost-user-net") {
        std::printf("%-12s %-16s %-10s %-7lld %-9s %s  switch %s, %s, mode %s\n", std::string(o.at("id").as_string()).c_str(),
                    "vhost-user-net", "-", static_cast<long long>(o.at("queues").to_number<int64_t>()),
                    o.at("connected").as_bool() ? "connected" : "waiting", std::string(o.at("socket").as_string()).c_str(),
                    std::string(o.at("switch").as_string()).c_str(), std::string(o.at("mac").as_string()).c_str(),
                    std::string(o.at("mode").as_string()).c_str());
        continue;
      }
      std::printf("%-12s %-16s %-10s %-7lld %-9s %s  %s%s\n", std::string(o.at("id").as_string()).c_str(),
                  std::string(o.at("type").as_string()).c_str(), format_size(o.at("size").to_number<uint64_t>()).c_str(),
                  static_cast<long long>(o.at("queues").to_number<int64_t>()),
                  o.at("connected").as_bool() ? "connected" : "waiting", std::string(o.at("socket").as_string()).c_str(),
                  std::string(o.at("file").as_string()).c_str(), o.at("read_only").as_bool() ? " (ro)" : "");
    }
    // The connected front-ends' guest memory: where it is, and whether its
    // file is sealed against shrinking (an unsealed one may be cut under us:
    // survived, but the requests on it fail).
    for (auto& e : out.as_array()) {
      auto& o = e.as_object();
      if (!o.contains("regions")) continue;
      for (auto& r : o.at("regions").as_array()) {
        auto& x = r.as_object();
        std::printf("  %s memory: gpa 0x%llx, %s%s, %s\n", std::string(o.at("id").as_string()).c_str(),
                    static_cast<unsigned long long>(x.at("gpa").to_number<uint64_t>()),
                    format_size(x.at("size").to_number<uint64_t>()).c_str(), x.at("hugetlbfs").as_bool() ? " hugetlbfs" : "",
                    x.at("sealed").as_bool() ? "sealed against shrinking" : "not sealed");
      }
      print_poisoned(o);
    }
  } else if (cmd == "stats") {
    auto print = [](const json::object& o) {
      if (o.contains("switch")) {
        print_port(std::string(o.at("id").as_string()), o);
        print_poisoned(o);
        return;
      }
      const auto& queues = o.at("queues").as_array();
      if (!queues.empty() && queues[0].as_object().contains("offloaded")) {
        // Queues run by a device behind VFIO: interrupts go straight to the
        // VMM's call fds; we only relay kicks.
        std::printf("%s (offloaded):\n  %-5s %-8s %-8s %-8s %12s\n", std::string(o.at("id").as_string()).c_str(),
                    "QUEUE", "RUNNING", "VECTOR", "CALL_FD", "KICKS");
        for (auto& q : queues) {
          auto& x = q.as_object();
          std::printf("  %-5lld %-8s %-8lld %-8lld %12llu\n", static_cast<long long>(x.at("queue").to_number<int64_t>()),
                      x.at("running").as_bool() ? "yes" : "no", static_cast<long long>(x.at("vector").to_number<int64_t>()),
                      static_cast<long long>(x.at("call_fd").to_number<int64_t>()),
                      static_cast<unsigned long long>(x.at("kicks_relayed").to_number<uint64_t>()));
        }
        return;
      }
      std::printf("%s:\n  %-5s %-8s %12s %14s %14s %8s %8s %10s\n", std::string(o.at("id").as_string()).c_str(),
                  "QUEUE", "RUNNING", "REQUESTS", "READ", "WRITTEN", "ERRORS", "FLUSHES", "BATCHES");
      for (auto& q : o.at("queues").as_array()) {
        auto& x = q.as_object();
        std::printf("  %-5lld %-8s %12llu %14s %14s %8llu %8llu %10llu\n",
                    static_cast<long long>(x.at("queue").to_number<int64_t>()), x.at("running").as_bool() ? "yes" : "no",
                    static_cast<unsigned long long>(x.at("requests").to_number<uint64_t>()),
                    format_size(x.at("read_bytes").to_number<uint64_t>()).c_str(),
                    format_size(x.at("write_bytes").to_number<uint64_t>()).c_str(),
                    static_cast<unsigned long long>(x.at("errors").to_number<uint64_t>()),
                    static_cast<unsigned long long>(x.at("flushes").to_number<uint64_t>()),
                    static_cast<unsigned long long>(x.at("used_ring_batches").to_number<uint64_t>()));
        if (x.contains("guest_faults") && x.at("guest_faults").to_number<uint64_t>() != 0)
          std::printf("        %llu requests failed on guest memory that faulted\n",
                      static_cast<unsigned long long>(x.at("guest_faults").to_number<uint64_t>()));
        if (x.contains("broken")) {
          std::printf("        broken: %s", std::string(x.at("broken").as_string()).c_str());
          if (x.contains("fault_gpa"))
            std::printf(" at gpa 0x%llx", static_cast<unsigned long long>(x.at("fault_gpa").to_number<uint64_t>()));
          std::printf("\n");
        }
      }
      print_poisoned(o);
    };
    if (out.is_array())
      for (auto& e : out.as_array()) print(e.as_object());
    else
      print(out.as_object());
  } else if (cmd == "switch" && method == "switch-list") {
    if (out.as_array().empty()) std::printf("no switches\n");
    for (auto& v : out.as_array()) {
      auto& o = v.as_object();
      std::printf("switch %s on %s: MAC aging %llus, %llu flooded, %llu learned\n", std::string(o.at("name").as_string()).c_str(),
                  std::string(o.at("worker").as_string()).c_str(),
                  static_cast<unsigned long long>(o.at("aging_s").to_number<uint64_t>()),
                  static_cast<unsigned long long>(o.at("flooded").to_number<uint64_t>()),
                  static_cast<unsigned long long>(o.at("learned").to_number<uint64_t>()));
      for (auto& p : o.at("ports").as_array())
        print_port("  " + std::string(p.as_object().at("name").as_string()) + " (" +
                       std::string(p.as_object().at("kind").as_string()) + ")",
                   p.as_object().at("counters").as_object());
    }
  } else if (cmd == "switch" && method == "mac-table") {
    std::printf("%-18s %-16s %s\n", "MAC", "PORT", "AGE");
    for (auto& v : out.as_array()) {
      auto& o = v.as_object();
      std::printf("%-18s %-16s %.1fs\n", std::string(o.at("mac").as_string()).c_str(),
                  std::string(o.at("port").as_string()).c_str(), o.at("age_s").to_number<double>());
    }
  } else if (cmd == "switch" || cmd == "add-uplink" || cmd == "remove-uplink") {
    std::printf("ok: %s %s\n", method.c_str(), std::string(out.as_object().at("name").as_string()).c_str());
  } else if (cmd == "workers") {
    std::printf("%-10s %14s %10s %10s %10s\n", "WORKER", "POLLS", "SLEEPS", "BUSY", "UP");
    for (auto& w : out.as_array()) {
      auto& o = w.as_object();
      char busy[32] = "-";  // not kept without sluiced --busy-time
      if (o.at("busy_time").as_bool())
        std::snprintf(busy, sizeof busy, "%.2fs", o.at("busy_ns").to_number<double>() / 1e9);
      std::printf("%-10s %14llu %10llu %10s %9.2fs\n", std::string(o.at("name").as_string()).c_str(),
                  static_cast<unsigned long long>(o.at("polls").to_number<uint64_t>()),
                  static_cast<unsigned long long>(o.at("sleeps").to_number<uint64_t>()), busy,
                  o.at("uptime_ns").to_number<double>() / 1e9);
    }
  } else if (cmd == "vmm") {
    if (out.as_array().empty()) std::printf("nothing attached to any VMM\n");
    for (auto& v : out.as_array()) {
      auto& o = v.as_object();
      std::printf("%s\n", std::string(o.at("vmm").as_string()).c_str());
      for (auto& a : o.at("attached").as_array())
        std::printf("  %-12s as %s (QEMU %s)\n", std::string(a.as_object().at("export").as_string()).c_str(),
                    std::string(a.as_object().at("device").as_string()).c_str(),
                    std::string(a.as_object().at("qemu").as_string()).c_str());
    }
  } else if (cmd == "reload") {
    auto& o = out.as_object();
    for (const char* k : {"added", "removed", "replaced", "unchanged", "needs_restart"}) {
      std::string line;
      for (auto& x : o.at(k).as_array()) line += (line.empty() ? "" : ", ") + std::string(x.as_string());
      std::printf("%-14s %s\n", k, line.empty() ? "-" : line.c_str());
    }
    for (auto& e : o.at("errors").as_array())
      std::printf("error          %s: %s\n", std::string(e.as_object().at("id").as_string()).c_str(),
                  std::string(e.as_object().at("error").as_string()).c_str());
    if (!o.at("errors").as_array().empty()) return 1;
  } else if (cmd == "attach") {
    auto& o = out.as_object();
    std::printf("attached %s to %s as %s\n", std::string(o.at("id").as_string()).c_str(),
                std::string(o.at("vmm").as_string()).c_str(), std::string(o.at("device").as_string()).c_str());
  } else if (cmd == "irq") {
    auto& o = out.as_object();
    std::printf("%-12s %-6s %-14s %-14s %-8s %-8s %s\n", "EXPORT", "QUEUE", "KIND", "DEVICE", "VECTOR",
                "EVENTFD", "BYPASS");
    for (auto& v : o.at("vectors").as_array()) {
      auto& x = v.as_object();
      bool dev = x.at("kind").as_string() == "device-vector";
      std::printf("%-12s %-6lld %-14s %-14s %-8s %-8lld %s\n", std::string(x.at("export").as_string()).c_str(),
                  static_cast<long long>(x.at("queue").to_number<int64_t>()),
                  std::string(x.at("kind").as_string()).c_str(),
                  dev ? std::string(x.at("device").as_string()).c_str() : "-",
                  dev ? std::to_string(x.at("vector").to_number<int64_t>()).c_str() : "-",
                  static_cast<long long>(x.at("eventfd").to_number<int64_t>()),
                  x.at("bypass_eligible").as_bool() ? "eligible (if the VMM's call fd is a KVM irqfd)"
                  : dev                            ? "no (queue not running)"
                                                   : "no (a worker signals the call fd)");
    }
    auto& p = o.at("platform").as_object();
    std::printf("platform %s, %s\n  cpu:   %s\n  iommu: %s\n  => device interrupts %s be posted to guests here\n",
                std::string(p.at("arch").as_string()).c_str(), std::string(p.at("kvm").as_string()).c_str(),
                std::string(p.at("cpu").as_string()).c_str(), std::string(p.at("iommu").as_string()).c_str(),
                p.at("bypass_possible").as_bool() ? "can" : "cannot be shown to");
  } else if (cmd == "vfio") {
    if (out.as_array().empty()) std::printf("no VFIO containers (start sluiced with --vfio-group N)\n");
    for (auto& v : out.as_array()) {
      auto& o = v.as_object();
      auto u = [&](const char* k) { return static_cast<unsigned long long>(o.at(k).to_number<uint64_t>()); };
      std::printf("group %llu: %s, page sizes 0x%llx, %llu mapping(s) for %llu region(s), %llu map / %llu unmap "
                  "calls, %llu rollback(s)",
                  u("group"), std::string(o.at("iommu").as_string()).c_str(), u("iova_pgsizes"),
                  u("kernel_mappings"), u("regions"), u("map_calls"), u("unmap_calls"), u("rollbacks"));
      if (o.contains("dma_avail")) std::printf(", %llu more allowed", u("dma_avail"));
      std::printf("\n");
      for (auto& r : o.at("iova_ranges").as_array())
        std::printf("  IOVA 0x%llx-0x%llx\n",
                    static_cast<unsigned long long>(r.as_object().at("start").to_number<uint64_t>()),
                    static_cast<unsigned long long>(r.as_object().at("last").to_number<uint64_t>()));
    }
  } else {
    std::printf("ok: %s %s\n", cmd.c_str(), std::string(out.as_object().at("id").as_string()).c_str());
  }
  return 0;
}
