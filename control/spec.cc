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
      if (val.empty() || val.find_first_of(" /\t") != std::string::npos)
        throw SpecError("id: must be non-empty, without spaces or '/'");
      s.id = val;
    } else if (key == "path") {
      if (val.empty() || val.size() >= 108) throw SpecError("path: must be 1..107 characters (a unix socket path)");
      s.path = val;
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
    } else {
      throw SpecError("unknown key '" + key +
                      "' (id, path, file, queues, ro, size, serial, queue-size, direct, null, vfio, offload)");
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

}  // namespace sluice::control
