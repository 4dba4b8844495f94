// Where sluiced keeps its files by default, shared by sluiced and sluicectl.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace sluice::control {

// Sockets: $SLUICE_RUN_DIR, else /run/sluice for root, else
// $XDG_RUNTIME_DIR/sluice, else /tmp/sluice-UID.
inline std::string default_run_dir() {
  if (const char* d = std::getenv("SLUICE_RUN_DIR"); d && *d) return d;
  if (::geteuid() == 0) return "/run/sluice";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/sluice";
  return "/tmp/sluice-" + std::to_string(::geteuid());
}

// Images: $SLUICE_DATA_DIR, else /var/lib/sluice for root, else
// $HOME/.local/share/sluice.
inline std::string default_data_dir() {
  if (const char* d = std::getenv("SLUICE_DATA_DIR"); d && *d) return d;
  if (::geteuid() == 0) return "/var/lib/sluice";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.local/share/sluice";
  return "/tmp/sluice-data-" + std::to_string(::geteuid());
}

inline std::string default_api_path() { return default_run_dir() + "/api.sock"; }

}  // namespace sluice::control
