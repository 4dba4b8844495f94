// control/: the --blk spec syntax and the JSON-RPC handler, including every
// error code a client can provoke.
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include <grp.h>

#include <boost/json.hpp>

#include <gtest/gtest.h>

#include "control/daemon.h"
#include "control/qmp.h"
#include "control/spec.h"
#include "control/vmm.h"
#include "tests/support/fake_vfio.h"

namespace sluice::control {
namespace {

namespace json = boost::json;

TEST(BlkSpec, ParsesEveryKey) {
  BlkSpec s = parse_blk_spec(
      "id=vm1,path=/run/sluice/vm1.sock,file=/srv/vm1.img,queues=2,ro,size=8G,serial=abc,queue-size=128,direct=off");
  EXPECT_EQ(s.id, "vm1");
  EXPECT_EQ(s.path, "/run/sluice/vm1.sock");
  EXPECT_EQ(s.file, "/srv/vm1.img");
  EXPECT_EQ(s.queues, 2);
  EXPECT_TRUE(s.read_only);
  EXPECT_EQ(s.size, 8ull << 30);
  EXPECT_EQ(s.serial, "abc");
  EXPECT_EQ(s.queue_size, 128);
  EXPECT_FALSE(s.direct);
}

TEST(BlkSpec, DefaultsIdFromSocketName) {
  BlkSpec s = parse_blk_spec("path=/tmp/disk7.sock,file=/tmp/x");
  EXPECT_EQ(s.id, "disk7");
  EXPECT_EQ(s.serial, "disk7");
  EXPECT_EQ(s.queues, 1);
  EXPECT_FALSE(s.read_only);
}

TEST(BlkSpec, NullBackend) {
  BlkSpec s = parse_blk_spec("path=/tmp/n.sock,null,size=1G");
  EXPECT_TRUE(s.null_backend);
  EXPECT_THROW(parse_blk_spec("path=/tmp/n.sock,null"), SpecError);              // needs size
  EXPECT_THROW(parse_blk_spec("path=/tmp/n.sock,null,size=1G,file=/x"), SpecError);  // not both
}

TEST(Spec, ExportLimits) {
  BlkSpec b = parse_blk_spec("path=/tmp/a.sock,file=/x");
  EXPECT_EQ(b.limits.max_memory, ExportLimits::kDefaultMaxMemory);
  EXPECT_EQ(b.limits.max_regions, 509u);
  b = parse_blk_spec("path=/tmp/a.sock,file=/x,max-memory=64G,max-regions=8");
  EXPECT_EQ(b.limits.max_memory, 64ull << 30);
  EXPECT_EQ(b.limits.max_regions, 8u);
  NetSpec n = parse_net_spec("path=/tmp/n.sock,max-memory=2G");
  EXPECT_EQ(n.limits.max_memory, 2ull << 30);
  for (const char* bad : {"path=/tmp/a.sock,file=/x,max-memory=0", "path=/tmp/a.sock,file=/x,max-memory=lots",
                          "path=/tmp/a.sock,file=/x,max-regions=0", "path=/tmp/a.sock,file=/x,max-regions=510"})
    EXPECT_THROW(parse_blk_spec(bad), SpecError) << bad;
  EXPECT_THROW(parse_net_spec("path=/tmp/n.sock,max-regions=1000"), SpecError);
}

TEST(Spec, PortSecurity) {
  NetSpec n = parse_net_spec("path=/tmp/n.sock");
  EXPECT_TRUE(n.mac_lock);
  EXPECT_EQ(n.max_macs, 64u);
  EXPECT_EQ(n.flood_rate, 10000u);
  n = parse_net_spec("path=/tmp/n.sock,mac-lock=off,max-macs=4096,flood-rate=0");
  EXPECT_FALSE(n.mac_lock);
  EXPECT_EQ(n.max_macs, 4096u);
  EXPECT_EQ(n.flood_rate, 0u);
  for (const char* bad : {"path=/tmp/n.sock,mac-lock=yes", "path=/tmp/n.sock,max-macs=4097",
                          "path=/tmp/n.sock,flood-rate=fast", "path=/tmp/n.sock,flood-rate=100000001"})
    EXPECT_THROW(parse_net_spec(bad), SpecError) << bad;
  UplinkSpec u = parse_uplink_spec("switch=up,dpdk=net_tap0,iface=x");
  EXPECT_EQ(u.max_macs, 1024u);
  EXPECT_EQ(u.flood_rate, 0u);
  u = parse_uplink_spec("switch=up,max-macs=16,flood-rate=500,dpdk=net_tap0");
  EXPECT_EQ(u.max_macs, 16u);
  EXPECT_EQ(u.flood_rate, 500u);
  EXPECT_THROW(parse_uplink_spec("switch=up,max-macs=5000,dpdk=net_tap0"), SpecError);
}

TEST(BlkSpec, Refusals) {
  for (const char* bad : {
           "file=/x",                                   // no path
           "path=/tmp/a.sock",                          // no file
           "path=/tmp/a.sock,file=/x,queues=0",         // zero queues
           "path=/tmp/a.sock,file=/x,queues=65",        // too many
           "path=/tmp/a.sock,file=/x,queues=two",       // not a number
           "path=/tmp/a.sock,file=/x,size=0",           // zero size
           "path=/tmp/a.sock,file=/x,size=12Q",         // unknown unit
           "path=/tmp/a.sock,file=/x,size=99999999999T",  // overflow
           "path=/tmp/a.sock,file=/x,queue-size=100",   // not a power of two
           "path=/tmp/a.sock,file=/x,serial=123456789012345678901",  // 21 chars
           "path=/tmp/a.sock,file=/x,bogus=1",          // unknown key
           "path=/tmp/a.sock,file=/x,id=a/b",           // bad id
           "path=/tmp/a.sock,file=/x,direct=maybe",
           "path=/tmp/a.sock,file=/x,ro=perhaps",
           "path=/tmp/a.sock,file=/x,novalue",
           "path=/tmp/a.sock,vfio=00:05.0",             // not DDDD:BB:DD.F
           "path=/tmp/a.sock,vfio=0000:00:05.g",        // not hex
           "path=/tmp/a.sock,vfio=0000:00:05.0,file=/x",  // the device is the disk
           "path=/tmp/a.sock,vfio=0000:00:05.0,null",
           "path=/tmp/a.sock,vfio=0000:00:05.0,size=1G",
           "path=/tmp/a.sock,vfio=0000:00:05.0,ro",
           "path=/tmp/a.sock,file=/x,offload=on",       // offload needs vfio=
           "path=/tmp/a.sock,vfio=0000:00:05.0,offload=maybe",
       }) {
    EXPECT_THROW(parse_blk_spec(bad), SpecError) << bad;
  }
  std::string long_path = "path=/" + std::string(120, 'x') + ",file=/x";
  EXPECT_THROW(parse_blk_spec(long_path), SpecError);
}

TEST(BlkSpec, VfioBackends) {
  BlkSpec p = parse_blk_spec("path=/tmp/p.sock,vfio=0000:00:1f.7");
  EXPECT_EQ(p.vfio, "0000:00:1f.7");
  EXPECT_FALSE(p.offload);
  EXPECT_EQ(p.file, "vfio:0000:00:1f.7");
  BlkSpec o = parse_blk_spec("path=/tmp/o.sock,vfio=0000:00:05.0,offload=on");
  EXPECT_TRUE(o.offload);
  EXPECT_EQ(o.id, "o");
}

TEST(Size, UnitsAndFormatting) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("1t"), 1ull << 40);
  EXPECT_EQ(format_size(1ull << 30), "1 GiB");
  EXPECT_EQ(format_size(1536), "1.5 KiB");
}

int rpc_code(Daemon& d, const std::string& req) {
  json::value v = json::parse(handle_rpc(d, req));
  auto* e = v.as_object().if_contains("error");
  return e ? static_cast<int>(e->as_object().at("code").as_int64()) : 0;
}

TEST(Rpc, ErrorsAreAnsweredNeverFatal) {
  Daemon d(DaemonOptions{});
  EXPECT_EQ(rpc_code(d, "{not json"), -32700);
  EXPECT_EQ(rpc_code(d, "[1,2]"), -32600);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1})"), -32600);                    // no method
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":7})"), -32600);         // method not a string
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"fly"})"), -32601);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"list","params":[1]})"), -32602);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"remove","params":{}})"), -32602);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"remove","params":{"id":5}})"), -32602);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"add-blk","params":{"spec":"file=/x"}})"), -32602);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"remove","params":{"id":"nope"}})"), -32000);
  EXPECT_EQ(rpc_code(d, R"({"jsonrpc":"2.0","id":1,"method":"stats","params":{"id":"nope"}})"), -32000);
  // And it still answers.
  json::value ok = json::parse(handle_rpc(d, R"({"jsonrpc":"2.0","id":"x","method":"list"})"));
  EXPECT_TRUE(ok.as_object().at("result").as_array().empty());
  EXPECT_EQ(ok.as_object().at("id").as_string(), "x");
  // A notification gets no response at all.
  EXPECT_TRUE(handle_rpc(d, R"({"jsonrpc":"2.0","method":"list"})").empty());
}

TEST(Rpc, AddListStatsRemove) {
  char dir[] = "/tmp/sluice-ctl-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string base = dir;
  DaemonOptions o;
  Daemon d(o);
  // Workers are started by run(); without them add-blk must fail cleanly.
  std::string req = R"({"jsonrpc":"2.0","id":1,"method":"add-blk","params":{"spec":"path=)" + base +
                    R"(/a.sock,file=)" + base + R"(/a.img,size=1M"}})";
  EXPECT_EQ(rpc_code(d, req), -32000);
  json::value l = json::parse(handle_rpc(d, R"({"jsonrpc":"2.0","id":1,"method":"list"})"));
  EXPECT_TRUE(l.as_object().at("result").as_array().empty());  // nothing half-added
  ::unlink((base + "/a.img").c_str());
  ::rmdir(dir);
}

// --vfio-group: containers open before any export, with errors a user can
// act on; the API reports them.
TEST(Vfio, GroupsOpenAndShowInTheApi) {
  test::FakeVfio k;
  k.add_group(7);
  k.add_group(8, /*viable=*/false);
  {
    DaemonOptions o;
    o.vfio_groups = {7};
    o.vfio_kernel = &k;
    Daemon d(o);
    d.open_vfio();
    json::value v = json::parse(handle_rpc(d, R"({"jsonrpc":"2.0","id":1,"method":"vfio"})"));
    const json::array& a = v.as_object().at("result").as_array();
    ASSERT_EQ(a.size(), 1u);
    const json::object& g = a[0].as_object();
    EXPECT_EQ(g.at("group").to_number<int>(), 7);
    EXPECT_EQ(g.at("iommu").as_string(), "type1v2");
    EXPECT_EQ(g.at("kernel_mappings").to_number<int>(), 0);
    EXPECT_EQ(g.at("dma_avail").to_number<int>(), 65535);
    EXPECT_EQ(g.at("iova_ranges").as_array().size(), 2u);
    EXPECT_EQ(d.dma_mappers().size(), 1u);
  }
  EXPECT_EQ(k.open_fds(), 0u);  // the daemon closed its container and group
  auto message_of = [&](int group) {
    DaemonOptions o;
    o.vfio_groups = {group};
    o.vfio_kernel = &k;
    Daemon d(o);
    try {
      d.open_vfio();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message_of(8).find("bind every device of the group to vfio-pci"), std::string::npos);
  EXPECT_NE(message_of(9).find("cannot open VFIO group 9"), std::string::npos);
  EXPECT_EQ(k.open_fds(), 0u);
}

// ---------------------------------------------------------------- API access

// One request over the API socket as `uid`/`gid` (a forked child drops to
// them when they differ from ours); returns the response line.
std::string call_as(const std::string& path, uid_t uid, gid_t gid,
                    const std::string& request = R"({"jsonrpc":"2.0","id":1,"method":"list"})") {
  int p[2];
  if (::pipe(p) != 0) return "pipe";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    if (gid != ::getegid() && ::setgid(gid) != 0) _exit(3);
    if (::setgroups(0, nullptr) != 0 && ::geteuid() == 0) _exit(3);
    if (uid != ::geteuid() && ::setuid(uid) != 0) _exit(3);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      (void)!::write(p[1], "connect-refused", 15);
      _exit(0);
    }
    std::string req = request + "\n";
    (void)!::write(fd, req.data(), req.size());
    char buf[2048];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) (void)!::write(p[1], buf, static_cast<size_t>(n));
    _exit(0);
  }
  ::close(p[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return out;
}

struct RunningDaemon {
  explicit RunningDaemon(DaemonOptions o) : d(std::move(o)) {
    t = std::thread([this] { rc = d.run(); });
  }
  ~RunningDaemon() {
    asio::post(d.io(), [this] { d.stop(); });
    t.join();
  }
  bool wait_socket(const std::string& path) {
    for (int i = 0; i < 200; ++i) {
      struct stat st;
      if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return true;
      ::usleep(10000);
    }
    return false;
  }
  Daemon d;
  std::thread t;
  int rc = -1;
};

TEST(ApiAccess, OwnerAndRootOnlyByDefault) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  char dir[] = "/tmp/sluice-api-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  ::chmod(dir, 0755);  // the directory is not what keeps others out
  std::string path = std::string(dir) + "/api.sock";
  {
    DaemonOptions o;
    o.api_path = path;
    RunningDaemon r(o);
    ASSERT_TRUE(r.wait_socket(path));
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    // Another uid may not even connect (mode 0600)...
    EXPECT_EQ(call_as(path, 65534, 65534), "connect-refused");
    // ...and if the socket were opened to it, SO_PEERCRED still refuses:
    ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
    std::string refused = call_as(path, 65534, 65534);
    EXPECT_NE(refused.find("-32001"), std::string::npos) << refused;
    EXPECT_NE(refused.find("permission denied: uid 65534"), std::string::npos) << refused;
    // The daemon keeps serving its owner.
    std::string ok = call_as(path, ::geteuid(), ::getegid());
    EXPECT_NE(ok.find("\"result\":[]"), std::string::npos) << ok;
  }
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(ApiAccess, AGroupMayBeLetIn) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  char dir[] = "/tmp/sluice-api-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  ::chmod(dir, 0755);
  std::string path = std::string(dir) + "/api.sock";
  {
    DaemonOptions o;
    o.api_path = path;
    o.api_group = "65534";
    RunningDaemon r(o);
    ASSERT_TRUE(r.wait_socket(path));
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0660u);
    EXPECT_EQ(st.st_gid, 65534u);
    std::string member = call_as(path, 65534, 65534);
    EXPECT_NE(member.find("\"result\":[]"), std::string::npos) << member;
    // A uid outside the group: the file mode already keeps it out.
    EXPECT_EQ(call_as(path, 12345, 12345), "connect-refused");
  }
  DaemonOptions bad;
  bad.api_path = path;
  bad.api_group = "no-such-group-here";
  Daemon d(bad);
  EXPECT_EQ(d.run(), 1);  // refused at start, with a message
  ::unlink(path.c_str());
  ::rmdir(dir);
}

// A member of --api-group acts within the directories the owner gave it;
// path= replaces nothing but a stale socket, for anyone.
TEST(ApiAccess, AMemberIsConfined) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  char dirt[] = "/tmp/sluice-conf-XXXXXX";
  ASSERT_NE(::mkdtemp(dirt), nullptr);
  std::string dir = dirt;
  ::chmod(dirt, 0755);
  for (const char* sub : {"/files", "/outside", "/sub"}) ASSERT_EQ(::mkdir((dir + sub).c_str(), 0755), 0);
  ASSERT_EQ(::symlink((dir + "/outside").c_str(), (dir + "/files/link").c_str()), 0);
  { std::ofstream(dir + "/regular.sock") << "not a socket"; }
  std::string api = dir + "/api.sock";
  DaemonOptions o;
  o.api_path = api;
  o.api_group = "65534";
  o.file_dirs = {dir + "/files"};
  RunningDaemon r(o);
  ASSERT_TRUE(r.wait_socket(api));
  auto add = [&](const char* method, const std::string& spec, bool member = true) {
    std::string req = R"({"jsonrpc":"2.0","id":1,"method":")" + std::string(method) + R"(","params":{"spec":")" +
                      spec + R"("}})";
    return member ? call_as(api, 65534, 65534, req) : call_as(api, 0, 0, req);
  };
  auto denied = [](const std::string& resp) { return resp.find("-32001") != std::string::npos; };
  auto exists = [](const std::string& p) { return ::access(p.c_str(), F_OK) == 0; };
  // Within bounds: served, and the socket is the member's.
  std::string ok = add("add-blk", "path=" + dir + "/m.sock,file=" + dir + "/files/m.img,size=1M");
  EXPECT_NE(ok.find("\"result\""), std::string::npos) << ok;
  struct stat st{};
  ASSERT_EQ(::stat((dir + "/m.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_TRUE(exists(dir + "/files/m.img"));
  // Out of bounds: refused, nothing created.
  for (const std::string& spec : {
           "path=" + dir + "/sub/a.sock,file=" + dir + "/files/a.img,size=1M",      // socket not directly in the dir
           "path=" + dir + "/b.sock,file=" + dir + "/outside/b.img,size=1M",        // file outside
           "path=" + dir + "/c.sock,file=" + dir + "/files/link/c.img,size=1M",     // a symlink out
           "path=" + dir + "/d.sock,file=" + dir + "/files/../outside/d.img,size=1M",  // '..' out
           "path=" + dir + "/e.sock,vfio=0000:00:05.0",                              // a PCI device
       }) {
    std::string resp = add("add-blk", spec);
    EXPECT_TRUE(denied(resp)) << spec << ": " << resp;
  }
  for (const char* f : {"/sub/a.sock", "/b.sock", "/outside/b.img", "/outside/c.img", "/outside/d.img", "/e.sock"})
    EXPECT_FALSE(exists(dir + f)) << f;
  EXPECT_TRUE(denied(add("add-net", "path=/tmp/sluice-conf-net.sock")));
  EXPECT_TRUE(denied(add("add-uplink", "switch=up,dpdk=net_pcap0,rx_pcap=/etc/shadow")));
  std::string attach = call_as(api, 65534, 65534,
                               R"({"jsonrpc":"2.0","id":1,"method":"attach","params":{"id":"m","vmm":"qmp:)" + api + R"("}})");
  EXPECT_NE(attach.find("may attach only to a QMP socket it owns"), std::string::npos) << attach;
  // Nobody replaces what is not a stale socket: the owner is refused too.
  std::string reg = add("add-blk", "path=" + dir + "/regular.sock,null,size=1M", /*member=*/false);
  EXPECT_NE(reg.find("exists and is not a socket"), std::string::npos) << reg;
  std::ifstream f(dir + "/regular.sock");
  std::string content;
  std::getline(f, content);
  EXPECT_EQ(content, "not a socket");
  // The owner may name any path.
  std::string own = add("add-blk", "path=" + dir + "/sub/o.sock,file=" + dir + "/outside/o.img,size=1M", false);
  EXPECT_NE(own.find("\"result\""), std::string::npos) << own;
  // A member may remove an export.
  std::string rm = call_as(api, 65534, 65534, R"({"jsonrpc":"2.0","id":1,"method":"remove","params":{"id":"m"}})");
  EXPECT_NE(rm.find("\"result\""), std::string::npos) << rm;
  EXPECT_EQ(std::system(("rm -rf " + dir).c_str()), 0);
}

TEST(Confinement, StaleSocketsOnly) {
  char dirt[] = "/tmp/sluice-stale-XXXXXX";
  ASSERT_NE(::mkdtemp(dirt), nullptr);
  std::string dir = dirt;
  clear_stale_socket(dir + "/none.sock");  // nothing there: fine
  // A socket no one listens on is removed; one in use stays.
  auto listen_on = [](const std::string& p, bool keep) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", p.c_str());
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    EXPECT_EQ(::listen(fd, 1), 0);
    if (!keep) ::close(fd);
    return keep ? fd : -1;
  };
  listen_on(dir + "/stale.sock", false);
  clear_stale_socket(dir + "/stale.sock");
  EXPECT_NE(::access((dir + "/stale.sock").c_str(), F_OK), 0);
  int live = listen_on(dir + "/live.sock", true);
  EXPECT_THROW(clear_stale_socket(dir + "/live.sock"), std::runtime_error);
  EXPECT_EQ(::access((dir + "/live.sock").c_str(), F_OK), 0);
  ::close(live);
  ASSERT_EQ(::mkdir((dir + "/adir").c_str(), 0700), 0);
  EXPECT_THROW(clear_stale_socket(dir + "/adir"), std::runtime_error);
  EXPECT_EQ(std::system(("rm -rf " + dir).c_str()), 0);
}

TEST(Confinement, NoDirectoriesNoPaths) {
  Confinement none;
  ApiCaller m = ApiCaller::member(1000);
  EXPECT_THROW(none.check_socket("/run/sluice/x.sock", m), PermissionError);
  EXPECT_THROW(none.open_file("/srv/x.img", false, m), PermissionError);
  EXPECT_NO_THROW(none.check_socket("/anywhere/x.sock", ApiCaller{}));
  EXPECT_FALSE(none.open_file("/anywhere/x.img", true, ApiCaller{}).valid());  // the owner opens it as given
  EXPECT_THROW(Confinement({"/no/such/dir"}, {}), std::runtime_error);
}

// ---------------------------------------------------------------- metrics

std::string http_get(uint16_t port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return "connect failed";
  }
  (void)!::write(fd, request.data(), request.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

TEST(Metrics, PrometheusTextOverHttp) {
  DaemonOptions o;
  o.metrics = "127.0.0.1:0";
  RunningDaemon r(o);
  uint16_t port = 0;
  for (int i = 0; i < 200 && port == 0; ++i) {
    std::promise<uint16_t> p;
    auto f = p.get_future();
    asio::post(r.d.io(), [&] { p.set_value(r.d.metrics_port()); });
    if (f.wait_for(std::chrono::milliseconds(50)) == std::future_status::ready) port = f.get();
  }
  ASSERT_NE(port, 0);
  std::string ok = http_get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(ok.find("# TYPE sluice_worker_sleep_seconds_total counter"), std::string::npos);
  EXPECT_NE(ok.find("sluice_worker_poll_seconds_total{worker=\"worker0\"} "), std::string::npos);
  EXPECT_EQ(http_get(port, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(http_get(port, "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n").rfind("HTTP/1.1 405", 0), 0u);
  // Garbage, and a header block over the limit: the connection is dropped...
  EXPECT_EQ(http_get(port, "\x01\x02 nonsense\r\n\r\n").find("200 OK"), std::string::npos);
  EXPECT_EQ(http_get(port, "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n")
                .find("200 OK"),
            std::string::npos);
  // ...and the daemon keeps serving.
  EXPECT_EQ(http_get(port, "GET /metrics HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200 OK", 0), 0u);
}

TEST(Metrics, TextFormatAndListenSyntax) {
  MetricsText m;
  m.add("x_total", "counter", "An x.", {{"export", "a\"b\\c\nd"}}, 3);
  m.add("x_total", "counter", "An x.", {{"export", "e"}}, 4);
  std::string t = m.render();
  EXPECT_EQ(t, "# HELP x_total An x.\n# TYPE x_total counter\n"
               "x_total{export=\"a\\\"b\\\\c\\nd\"} 3\nx_total{export=\"e\"} 4\n");
  EXPECT_EQ(parse_listen("127.0.0.1:9310"), (std::pair<std::string, uint16_t>{"127.0.0.1", 9310}));
  EXPECT_EQ(parse_listen("[::1]:0").first, "::1");
  for (const char* bad : {"9310", "localhost:9310", "127.0.0.1:", "127.0.0.1:70000", "[::1]9310", "1.2.3.4:x"})
    EXPECT_THROW(parse_listen(bad), std::invalid_argument) << bad;
}

// ---------------------------------------------------------------- QMP

// A scripted QMP server on a unix socket: greets like QEMU, answers each
// command through `answer` (which returns the reply line(s), or "" to hang
// up), and records the commands it saw.
struct FakeQmp {
  using Answer = std::function<std::string(const std::string& cmd, const json::object& msg)>;
  FakeQmp(const std::string& path, Answer a, std::string greeting = "") : path_(path), answer_(std::move(a)) {
    if (greeting.empty())
      greeting = R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}})";
    ::unlink(path.c_str());
    lfd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    EXPECT_EQ(::bind(lfd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    EXPECT_EQ(::listen(lfd_, 4), 0);
    t_ = std::thread([this, greeting] {
      int c = ::accept(lfd_, nullptr, nullptr);
      if (c < 0) return;
      std::string g = greeting + "\r\n";
      (void)!::write(c, g.data(), g.size());
      std::string buf;
      char tmp[4096];
      for (;;) {
        ssize_t n = ::read(c, tmp, sizeof tmp);
        if (n <= 0) break;
        buf.append(tmp, static_cast<size_t>(n));
        size_t nl;
        bool hang = false;
        while ((nl = buf.find('\n')) != std::string::npos) {
          json::object m = json::parse(buf.substr(0, nl)).as_object();
          buf.erase(0, nl + 1);
          std::string cmd(m.at("execute").as_string());
          {
            std::lock_guard<std::mutex> l(mu_);
            seen_.push_back(cmd);
          }
          std::string id = json::serialize(m.at("id"));
          std::string reply = cmd == "qmp_capabilities" ? R"({"return": {}, "id": )" + id + "}" : answer_(cmd, m);
          if (reply.empty()) {
            hang = true;
            break;
          }
          // "ID" in a scripted reply is replaced by the request's id.
          for (size_t at; (at = reply.find("\"ID\"")) != std::string::npos;) reply.replace(at, 4, id);
          reply += "\r\n";
          (void)!::write(c, reply.data(), reply.size());
        }
        if (hang) break;
      }
      ::close(c);
    });
  }
  ~FakeQmp() {
    ::shutdown(lfd_, SHUT_RDWR);
    ::close(lfd_);
    t_.join();
    ::unlink(path_.c_str());
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> l(mu_);
    return seen_;
  }
  std::string path_;
  Answer answer_;
  int lfd_ = -1;
  std::thread t_;
  std::mutex mu_;
  std::vector<std::string> seen_;
};

const char kSharedMem[] = R"({"return": [{"id": "mem", "size": 268435456, "share": true, "merge": true, "dump": true, "prealloc": false, "policy": "default", "host-nodes": []}], "id": "ID"})";

TEST(Qmp, AttachSendsTheCommandsInOrder) {
  FakeQmp q("/tmp/sluice-fakeqmp-1.sock", [](const std::string& cmd, const json::object&) -> std::string {
    if (cmd == "query-memdev") return kSharedMem;
    if (cmd == "qom-list") return R"({"return": [{"name": "type", "type": "string"}], "id": "ID"})";
    if (cmd == "query-chardev") return R"({"return": [{"label": "serial0", "filename": "stdio"}], "id": "ID"})";
    if (cmd == "qom-get") return R"({"return": true, "id": "ID"})";
    return R"({"event": "SOMETHING", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}
{"return": {}, "id": "ID"})";
  });
  Attachment a = qmp_attach(AttachRequest{"vm1", "/run/x.sock", q.path_, 2});
  EXPECT_EQ(a.device_id, "sluice-vm1");
  EXPECT_EQ(a.qemu_version, "7.2.0");
  EXPECT_EQ(q.seen(), (std::vector<std::string>{"qmp_capabilities", "query-memdev", "qom-list", "query-chardev",
                                                "chardev-add", "device_add", "qom-get"}));
}

TEST(Qmp, ANetPortIsAddedWithItsMac) {
  json::object dev;
  std::mutex mu;
  FakeQmp q("/tmp/sluice-fakeqmp-4.sock", [&](const std::string& cmd, const json::object& m) -> std::string {
    if (cmd == "query-memdev") return kSharedMem;
    if (cmd == "qom-list" || cmd == "query-chardev") return R"({"return": [], "id": "ID"})";
    if (cmd == "query-kvm") return R"({"return": {"enabled": false, "present": true}, "id": "ID"})";
    if (cmd == "qom-get") return R"({"return": true, "id": "ID"})";
    if (cmd == "device_add") {
      std::lock_guard l(mu);
      dev = m.at("arguments").as_object();
    }
    return R"({"return": {}, "id": "ID"})";
  });
  AttachRequest r{"n1", "/run/n.sock", q.path_, 2, true, "52:54:00:00:00:0a"};
  Attachment a = qmp_attach(r);
  EXPECT_EQ(a.netdev_id, "sluice-n1");
  std::lock_guard l(mu);
  EXPECT_EQ(dev.at("driver").as_string(), "virtio-net-pci");
  EXPECT_EQ(dev.at("mac").as_string(), "52:54:00:00:00:0a");
  EXPECT_EQ(dev.at("mq").as_bool(), true);
  EXPECT_EQ(dev.at("vectors").to_number<int64_t>(), 0);
}

// A VMM that never answers, or never accepts: every wait has a deadline,
// and the daemon's cancel fd ends it at once.
TEST(Qmp, ASilentVmmIsGivenUpOnCancelAndAFullBacklogTimesOut) {
  std::string path = "/tmp/sluice-fakeqmp-silent.sock";
  ::unlink(path.c_str());
  int l = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(l, 0), 0);  // never accepts: connections wait in the backlog, no greeting
  int cancel = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    uint64_t one = 1;
    (void)!::write(cancel, &one, sizeof one);
  });
  auto t0 = std::chrono::steady_clock::now();
  AttachRequest r{"vm1", "/run/x.sock", path, 1};
  r.cancel_fd = cancel;
  try {
    qmp_attach(r);
    FAIL() << "attach succeeded";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));  // not the 5 s greeting deadline
  t.join();
  // Fill the backlog: the next connect cannot complete; it times out.
  std::vector<int> held;
  for (int i = 0; i < 8; ++i) {
    int c = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (::connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      ::close(c);
      break;
    }
    held.push_back(c);
  }
  t0 = std::chrono::steady_clock::now();
  try {
    QmpClient q(path, std::chrono::milliseconds(300));
    FAIL() << "connected";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("accepts no connection"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  for (int c : held) ::close(c);
  ::close(cancel);
  ::close(l);
  ::unlink(path.c_str());
}

TEST(Qmp, DeviceAddFailureIsReportedVerbatimAndUndone) {
  FakeQmp q("/tmp/sluice-fakeqmp-2.sock", [](const std::string& cmd, const json::object&) -> std::string {
    if (cmd == "query-memdev") return kSharedMem;
    if (cmd == "qom-list" || cmd == "query-chardev") return R"({"return": [], "id": "ID"})";
    if (cmd == "device_add")
      return R"({"error": {"class": "GenericError", "desc": "Bus 'pci.0' does not support hotplugging"}, "id": "ID"})";
    return R"({"return": {}, "id": "ID"})";
  });
  try {
    qmp_attach(AttachRequest{"vm1", "/run/x.sock", q.path_, 1});
    FAIL() << "attach succeeded";
  } catch (const QmpError& e) {
    EXPECT_EQ(e.error_class, "GenericError");
    EXPECT_EQ(e.description, "Bus 'pci.0' does not support hotplugging");
  }
  auto seen = q.seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), "chardev-remove");  // nothing left half attached
}

TEST(Qmp, AVmmDyingMidAttachIsAClearError) {
  FakeQmp q("/tmp/sluice-fakeqmp-3.sock", [](const std::string& cmd, const json::object&) -> std::string {
    if (cmd == "query-memdev") return kSharedMem;
    if (cmd == "qom-list" || cmd == "query-chardev") return R"({"return": [], "id": "ID"})";
    return "";  // dies on chardev-add
  });
  try {
    qmp_attach(AttachRequest{"vm1", "/run/x.sock", q.path_, 1});
    FAIL() << "attach succeeded";
  } catch (const QmpError&) {
    FAIL() << "not a QEMU error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("closed the QMP connection"), std::string::npos) << e.what();
  }
}

TEST(Qmp, NotQemuAndBadSpecs) {
  {
    FakeQmp q("/tmp/sluice-fakeqmp-4.sock", [](const std::string&, const json::object&) { return std::string(); },
              R"({"hello": "I am not QEMU"})");
    try {
      QmpClient c(q.path_, std::chrono::milliseconds(500));
      FAIL() << "connected";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("not a QMP socket"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(QmpClient("/nonexistent/qmp.sock", std::chrono::milliseconds(100)), std::runtime_error);
  EXPECT_EQ(parse_vmm("qmp:/a/b.sock"), "/a/b.sock");
  EXPECT_EQ(parse_vmm("/a/b.sock"), "/a/b.sock");
  EXPECT_THROW(parse_vmm("tcp:1.2.3.4:4444"), std::invalid_argument);
  EXPECT_THROW(parse_vmm("qmp:relative.sock"), std::invalid_argument);
}

TEST(Qmp, ApiAttachErrorsWithoutAVmm) {
  Daemon d(DaemonOptions{});
  std::string out;
  handle_rpc_async(d, R"({"jsonrpc":"2.0","id":3,"method":"attach","params":{"id":"nope","vmm":"qmp:/x"}})",
                   [&](std::string s) { out = std::move(s); });
  EXPECT_NE(out.find("no export with id 'nope'"), std::string::npos) << out;
  handle_rpc_async(d, R"({"jsonrpc":"2.0","id":4,"method":"attach","params":{"id":"x"}})",
                   [&](std::string s) { out = std::move(s); });
  EXPECT_NE(out.find("-32602"), std::string::npos) << out;
  handle_rpc_async(d, R"({"jsonrpc":"2.0","id":5,"method":"detach","params":{"id":"x"}})",
                   [&](std::string s) { out = std::move(s); });
  EXPECT_NE(out.find("not attached"), std::string::npos) << out;
  handle_rpc_async(d, R"({"jsonrpc":"2.0","id":6,"method":"vmm-list"})", [&](std::string s) { out = std::move(s); });
  EXPECT_NE(out.find("\"result\":[]"), std::string::npos) << out;
}

// ---------------------------------------------------------------- config + reload

void write_file(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

TEST(Config, LoadsAndRefusesWithReasons) {
  char dir[] = "/tmp/sluice-cfg-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string p = std::string(dir) + "/c.json";
  write_file(p, R"({"workers": 2, "cpus": [0, 1], "poll_us": 10, "metrics": "127.0.0.1:0",
                    "exports": [{"blk": "id=a,path=/tmp/a.sock,null,size=1M"}]})");
  DaemonOptions o = load_config(p);
  EXPECT_EQ(o.workers, 2u);
  EXPECT_EQ(o.cpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(o.poll_us, 10u);
  ASSERT_EQ(o.blk.size(), 1u);
  EXPECT_EQ(o.blk[0].id, "a");
  EXPECT_EQ(o.config, p);
  auto refused = [&](const char* text, const char* why) {
    write_file(p, text);
    try {
      load_config(p);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  refused("{not json", "not valid JSON");
  refused("[1]", "top level must be an object");
  refused(R"({"wrokers": 2})", "\"wrokers\" is not a known key");
  refused(R"({"workers": 0})", "\"workers\" must be a number 1..64");
  refused(R"({"cpus": "0,1"})", "\"cpus\" must be an array");
  refused(R"({"exports": [{"blk": "id=a,file=/x"}]})", "bad spec");
  refused(R"({"exports": [{"blk": "id=a,path=/tmp/a,null,size=1M"}, {"blk": "id=a,path=/tmp/b,null,size=1M"}]})",
          "twice");
  EXPECT_THROW(load_config(std::string(dir) + "/missing.json"), std::runtime_error);
  ::unlink(p.c_str());
  ::rmdir(dir);
}

json::value rpc_on(RunningDaemon& r, const std::string& req) {
  std::promise<std::string> pr;
  auto f = pr.get_future();
  asio::post(r.d.io(), [&] { pr.set_value(handle_rpc(r.d, req)); });
  return json::parse(f.get());
}

TEST(Config, ReloadTouchesOnlyWhatChanged) {
  char dir[] = "/tmp/sluice-cfg-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string d(dir), p = d + "/c.json";
  auto spec = [&](const char* id, const char* extra) {
    return std::string(R"({"blk": "id=)") + id + ",path=" + d + "/" + id + ".sock,null,size=1M" + extra + "\"}";
  };
  write_file(p, "{\"exports\": [" + spec("keep", "") + "," + spec("change", "") + "," + spec("drop", "") + "]}");
  RunningDaemon r(load_config(p));
  ASSERT_TRUE(r.wait_socket(d + "/drop.sock"));
  // An export added through the API is not the config's to manage.
  json::value add = rpc_on(r, R"({"jsonrpc":"2.0","id":1,"method":"add-blk","params":{"spec":"id=api,path=)" + d +
                                  R"(/api.sock,null,size=1M"}})");
  ASSERT_TRUE(add.as_object().contains("result")) << json::serialize(add);
  struct stat before;
  ASSERT_EQ(::stat((d + "/keep.sock").c_str(), &before), 0);
  write_file(p, "{\"workers\": 3, \"exports\": [" + spec("keep", "") + "," + spec("change", ",ro") + "," +
                    spec("new", "") + "]}");
  json::value res = rpc_on(r, R"({"jsonrpc":"2.0","id":2,"method":"reload"})");
  ASSERT_TRUE(res.as_object().contains("result")) << json::serialize(res);
  const json::object& o = res.as_object().at("result").as_object();
  EXPECT_EQ(json::serialize(o.at("unchanged")), R"(["keep"])");
  EXPECT_EQ(json::serialize(o.at("replaced")), R"(["change"])");
  EXPECT_EQ(json::serialize(o.at("removed")), R"(["drop"])");
  EXPECT_EQ(json::serialize(o.at("added")), R"(["new"])");
  EXPECT_EQ(json::serialize(o.at("needs_restart")), R"(["workers"])");
  EXPECT_TRUE(o.at("errors").as_array().empty());
  // The unchanged export kept its socket (same inode: never re-created).
  struct stat after;
  ASSERT_EQ(::stat((d + "/keep.sock").c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  json::value list = rpc_on(r, R"({"jsonrpc":"2.0","id":3,"method":"list"})");
  std::string ids;
  for (auto& e : list.as_object().at("result").as_array()) ids += std::string(e.as_object().at("id").as_string()) + " ";
  EXPECT_EQ(ids, "api change keep new ");
  // A broken file changes nothing and says why.
  write_file(p, "{oops");
  json::value bad = rpc_on(r, R"({"jsonrpc":"2.0","id":4,"method":"reload"})");
  EXPECT_NE(json::serialize(bad).find("not valid JSON"), std::string::npos);
  list = rpc_on(r, R"({"jsonrpc":"2.0","id":5,"method":"list"})");
  EXPECT_EQ(list.as_object().at("result").as_array().size(), 4u);
}

}  // namespace
}  // namespace sluice::control
