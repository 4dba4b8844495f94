#include "control/spec.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

namespace sluice::control {

namespace {
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  return out;
}

// An export's id and socket path, as every spec takes them.
std::string checked_id(const std::string& val) {
  if (val.empty() || val.find_first_of(" /\t") != std::string::npos)
    throw SpecError("id: must be non-empty, without spaces or '/'");
  return val;
}
std::string checked_path(const std::string& val) {
  if (val.empty() || val.size() >= 108) throw SpecError("path: must be 1..107 characters (a unix socket path)");
  return val;
}

uint64_t parse_uint(const std::string& key, const std::string& v, uint64_t max) {
  if (v.empty() || v.size() > 20) throw SpecError(key + ": expected a number, got '" + v + "'");
  uint64_t x = 0;
  for (char ch : v) {
    if (!std::isdigit(static_cast<unsigned char>(ch)))
      throw SpecError(key + ": expected a number, got '" + v + "'");
    if (__builtin_mul_overflow(x, 10u, &x) || __builtin_add_overflow(x, static_cast<uint64_t>(ch - '0'), &x))
      throw SpecError(key + ": number too large");
  }
  if (x > max) throw SpecError(key + ": " + v + " is above the limit " + std::to_string(max));
  return x;
}
}  // namespace

uint64_t parse_size(const std::string& text) {
  if (text.empty()) throw SpecError("size: empty");
  std::string digits = text;
  unsigned shift = 0;
  char last = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
  if (!std::isdigit(static_cast<unsigned char>(last))) {
    digits.pop_back();
    switch (last) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: throw SpecError("size: unknown unit '" + std::string(1, text.back()) + "' (K, M, G, T)");
    }
  }
  uint64_t n = parse_uint("size", digits, UINT64_MAX >> shift);
  if (n == 0) throw SpecError("size: must not be zero");
  return n << shift;
}

std::string format_size(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  double v = static_cast<double>(b);
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v == std::floor(v) ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

namespace {
// max-memory=SIZE, max-regions=N (both export kinds); false: not one of them.
bool parse_limit(const std::string& key, const std::string& val, ExportLimits& l) {
  if (key == "max-memory") {
    try {
      l.max_memory = parse_size(val);
    } catch (const SpecError& e) {
      throw SpecError(std::string("max-memory: ") + e.what());
    }
    return true;
  }
  if (key == "max-regions") {
    l.max_regions = static_cast<uint32_t>(parse_uint(key, val, 509));
    if (l.max_regions == 0) throw SpecError("max-regions: 1..509");
    return true;
  }
  return false;
}
}  // namespace

BlkSpec parse_blk_spec(const std::string& text) {
  BlkSpec s;
  bool have_path = false, have_file = false;
  for (const std::string& item : split(text, ',')) {
    if (item.empty()) continue;
    auto eq = item.find('=');
    std::string key = item.substr(0, eq);
    std::string val = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (key == "null") {
      if (eq != std::string::npos) throw SpecError("null: takes no value");
      s.null_backend = true;
    } else if (key == "ro" || key == "readonly") {
      if (eq != std::string::npos && val != "on" && val != "off" && val != "true" && val != "false")
        throw SpecError("ro: expected on/off");
      s.read_only = eq == std::string::npos || val == "on" || val == "true";
    } else if (eq == std::string::npos) {
      throw SpecError("'" + key + "': expected key=value");
    } else if (key == "id") {
      s.id = checked_id(val);
    } else if (key == "path") {
      s.path = checked_path(val);
      have_path = true;
    } else if (key == "file") {
      if (val.empty()) throw SpecError("file: empty");
      s.file = val;
      have_file = true;
    } else if (key == "queues" || key == "num-queues") {
      s.queues = static_cast<uint16_t>(parse_uint(key, val, 64));
      if (s.queues == 0) throw SpecError("queues: at least 1");
    } else if (key == "size") {
      s.size = parse_size(val);
    } else if (key == "direct") {
      if (val != "on" && val != "off") throw SpecError("direct: on or off");
      s.direct = val == "on";
    } else if (key == "serial") {
      if (val.size() > 20) throw SpecError("serial: at most 20 characters");
      s.serial = val;
    } else if (key == "vfio") {
      // DDDD:BB:DD.F, as under /sys/bus/pci/devices.
      bool ok = val.size() == 12 && val[4] == ':' && val[7] == ':' && val[10] == '.';
      for (size_t i = 0; ok && i < val.size(); ++i)
        if (i != 4 && i != 7 && i != 10) ok = std::isxdigit(static_cast<unsigned char>(val[i])) != 0;
      if (!ok) throw SpecError("vfio: a PCI address like 0000:00:05.0");
      s.vfio = val;
    } else if (key == "offload") {
      if (val != "on" && val != "off") throw SpecError("offload: on or off");
      s.offload = val == "on";
    } else if (key == "queue-size") {
      s.queue_size = static_cast<uint16_t>(parse_uint(key, val, 1024));
      if (s.queue_size < 2 || (s.queue_size & (s.queue_size - 1)))
        throw SpecError("queue-size: a power of two, 2..1024");
    } else if (parse_limit(key, val, s.limits)) {
    } else {
      throw SpecError("unknown key '" + key +
                      "' (id, path, file, queues, ro, size, serial, queue-size, direct, null, vfio, offload, "
                      "max-memory, max-regions)");
    }
  }
  if (!have_path) throw SpecError("path= is required (the vhost-user socket to create)");
  if (s.offload && s.vfio.empty()) throw SpecError("offload=on needs vfio=ADDR (the device that runs the queues)");
  if (!s.vfio.empty()) {
    if (have_file || s.null_backend || s.size != 0 || s.read_only)
      throw SpecError("vfio= serves the device's own disk: file=, null, size= and ro do not apply");
    s.file = "vfio:" + s.vfio;
  } else if (s.null_backend) {
    if (have_file) throw SpecError("null and file= exclude each other");
    if (s.size == 0) throw SpecError("null needs size=");
    s.file = "(null)";
  } else if (!have_file) {
    throw SpecError("file= is required (the backing file or block device)");
  }
  if (s.id.empty()) {
    auto slash = s.path.find_last_of('/');
    s.id = s.path.substr(slash == std::string::npos ? 0 : slash + 1);
    auto dot = s.id.rfind(".sock");
    if (dot != std::string::npos && dot + 5 == s.id.size()) s.id.erase(dot);
    if (s.id.empty()) s.id = "blk0";
  }
  if (s.serial.empty()) s.serial = s.id.substr(0, 20);
  return s;
}

namespace {
// The id from a socket path: its base name without ".sock".
std::string id_from_path(const std::string& path, const char* fallback) {
  auto slash = path.find_last_of('/');
  std::string id = path.substr(slash == std::string::npos ? 0 : slash + 1);
  auto dot = id.rfind(".sock");
  if (dot != std::string::npos && dot + 5 == id.size()) id.erase(dot);
  return id.empty() ? fallback : id;
}
}  // namespace

// Bounds of the port-security keys: a switch's MAC table has 4096 entries;
// a flood rate above 100 M frames/s is no limit.
constexpr uint64_t net_max_macs = 4096;
constexpr uint64_t net_max_flood = 100000000;

void check_switch_name(const std::string& n) {
  if (n.empty() || n.size() > 32) throw SpecError("switch: 1..32 characters");
  for (char c : n)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
      throw SpecError("switch: letters, digits, '-' and '_' only");
}

NetSpec parse_net_spec(const std::string& text) {
  NetSpec s;
  bool have_path = false, have_frame = false;
  for (const std::string& item : split(text, ',')) {
    if (item.empty()) continue;
    auto eq = item.find('=');
    if (eq == std::string::npos) throw SpecError("'" + item + "': expected key=value");
    std::string key = item.substr(0, eq), val = item.substr(eq + 1);
    if (key == "id") {
      s.id = checked_id(val);
    } else if (key == "path") {
      s.path = checked_path(val);
      have_path = true;
    } else if (key == "switch") {
      check_switch_name(val);
      s.sw = val;
    } else if (key == "queues") {
      s.queues = static_cast<uint16_t>(parse_uint(key, val, 256));
      if (s.queues == 0) throw SpecError("queues: at least 1 (queue pairs)");
    } else if (key == "queue-size") {
      s.queue_size = static_cast<uint16_t>(parse_uint(key, val, 32768));
      if (s.queue_size < 2 || (s.queue_size & (s.queue_size - 1)))
        throw SpecError("queue-size: a power of two, 2..32768");
    } else if (key == "mtu") {
      s.mtu = static_cast<uint16_t>(parse_uint(key, val, 9000));
      if (s.mtu < 68) throw SpecError("mtu: 68..9000");
    } else if (key == "mac") {
      std::string m = val;
      for (char& c : m) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      bool ok = m.size() == 17;
      uint64_t v = 0;
      for (size_t i = 0; ok && i < 17; ++i) {
        if (i % 3 == 2) {
          ok = m[i] == ':';
          continue;
        }
        ok = std::isxdigit(static_cast<unsigned char>(m[i])) != 0;
        v = v << 4 | static_cast<uint64_t>(std::isdigit(static_cast<unsigned char>(m[i])) ? m[i] - '0' : m[i] - 'a' + 10);
      }
      if (!ok) throw SpecError("mac: like 52:54:00:12:34:56");
      if ((v >> 40) & 1) throw SpecError("mac: a multicast address cannot be a port's");
      if (v == 0) throw SpecError("mac: must not be zero");
      s.mac = v;
    } else if (key == "mode") {
      if (val != "switch" && val != "reflect" && val != "sink" && val != "source")
        throw SpecError("mode: switch, reflect, sink or source");
      s.mode = val;
    } else if (key == "frame") {
      s.frame = static_cast<uint32_t>(parse_uint(key, val, 9014));
      have_frame = true;
    } else if (key == "mac-lock") {
      if (val != "on" && val != "off") throw SpecError("mac-lock: on or off");
      s.mac_lock = val == "on";
    } else if (key == "max-macs") {
      s.max_macs = static_cast<uint32_t>(parse_uint(key, val, net_max_macs));
    } else if (key == "flood-rate") {
      s.flood_rate = static_cast<uint32_t>(parse_uint(key, val, net_max_flood));
    } else if (parse_limit(key, val, s.limits)) {
    } else {
      throw SpecError("unknown key '" + key +
                      "' (id, path, switch, queues, queue-size, mtu, mac, mode, frame, mac-lock, max-macs, flood-rate, "
                      "max-memory, max-regions)");
    }
  }
  if (!have_path) throw SpecError("path= is required (the vhost-user socket to create)");
  if (have_frame && s.mode != "source") throw SpecError("frame= applies to mode=source only");
  if (s.frame < 60 || s.frame > uint32_t{s.mtu} + 14)
    throw SpecError("frame: 60..MTU+14 bytes (" + std::to_string(s.mtu + 14) + ")");
  if (s.id.empty()) s.id = id_from_path(s.path, "net0");
  if (s.mac == 0) {
    // Stable per id: 52:54:00 (QEMU's prefix) and 24 bits of the id's hash.
    uint32_t h = 2166136261u;
    for (char c : s.id) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
    s.mac = 0x525400000000ull | (h & 0xffffff);
  }
  return s;
}

UplinkSpec parse_uplink_spec(const std::string& text) {
  UplinkSpec u;
  // dpdk= takes the rest of the text: EAL device strings contain commas.
  auto d = text.find("dpdk=");
  if (d == std::string::npos || (d != 0 && text[d - 1] != ','))
    throw SpecError("dpdk= is required (an EAL device string, e.g. dpdk=net_tap0,iface=sl0)");
  u.devargs = text.substr(d + 5);
  if (u.devargs.empty()) throw SpecError("dpdk: empty device string");
  std::string head = d == 0 ? "" : text.substr(0, d - 1);
  bool have_switch = false;
  for (const std::string& item : split(head, ',')) {
    if (item.empty()) continue;
    auto eq = item.find('=');
    if (eq == std::string::npos) throw SpecError("'" + item + "': expected key=value");
    std::string key = item.substr(0, eq), val = item.substr(eq + 1);
    if (key == "switch") {
      check_switch_name(val);
      u.sw = val;
      have_switch = true;
    } else if (key == "queue-size") {
      u.queue_size = static_cast<uint16_t>(parse_uint(key, val, 4096));
      if (u.queue_size < 64) throw SpecError("queue-size: 64..4096");
    } else if (key == "max-macs") {
      u.max_macs = static_cast<uint32_t>(parse_uint(key, val, net_max_macs));
    } else if (key == "flood-rate") {
      u.flood_rate = static_cast<uint32_t>(parse_uint(key, val, net_max_flood));
    } else if (key == "name") {
      if (val.empty() || val.size() > 32 || val.find_first_of(" /\t") != std::string::npos)
        throw SpecError("name: 1..32 characters, no spaces or '/'");
      u.name = val;
    } else {
      throw SpecError("unknown key '" + key + "' (name, switch, queue-size, max-macs, flood-rate, then dpdk=DEVARGS last)");
    }
  }
  if (!have_switch) throw SpecError("switch= is required (before dpdk=)");
  if (u.name.empty()) u.name = u.devargs.substr(0, u.devargs.find(','));
  return u;
}

}  // namespace sluice::control
