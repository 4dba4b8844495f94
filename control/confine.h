// What an API peer may make the daemon create, open or replace
// (docs/SECURITY.md, "The management API").
//
// The daemon's owner (root or its own uid: the command line, the config file,
// and API peers with those credentials) may name any path. A member of
// --api-group may not: its sockets go directly into a socket directory, its
// backing files lie beneath a file directory (opened with openat2
// RESOLVE_BENEATH, so no symlink or ".." leads out), and it cannot hand the
// daemon a PCI device, a DPDK device string or another user's QMP socket.
// For everyone, a socket path replaces nothing but a stale socket.
#pragma once

#include <sys/types.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "dataplane/base/unique_fd.h"

namespace sluice::control {

// A refusal for lack of rights (API error -32001), not a failure.
struct PermissionError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ApiCaller {
  bool owner = true;  // root or the daemon's uid: may name any path
  uid_t uid = 0;
  static ApiCaller member(uid_t uid) { return ApiCaller{false, uid}; }
  std::string who() const { return owner ? "the daemon's owner" : "uid " + std::to_string(uid); }
};

// The directories an --api-group member's paths must lie in, resolved once
// (realpath) when the daemon starts. Throws std::runtime_error when one does
// not exist.
class Confinement {
 public:
  Confinement() = default;
  Confinement(const std::vector<std::string>& socket_dirs, const std::vector<std::string>& file_dirs);

  // A socket path for `c`: for a member, an entry directly in a socket
  // directory (its parent resolved with realpath). Throws with the reason.
  void check_socket(const std::string& path, const ApiCaller& c) const;
  // A backing file for `c`. Owner: invalid fd, open `path` as given. Member:
  // an fd of the file opened beneath a file directory (O_PATH, or created
  // O_RDWR when `create`), to be opened again through /proc/self/fd. Throws
  // with the reason.
  UniqueFd open_file(const std::string& path, bool create, const ApiCaller& c) const;
  // A VMM's QMP socket for `c`: for a member, a socket (not a link) the
  // member owns.
  void check_vmm(const std::string& path, const ApiCaller& c) const;

  // The default socket directory (the API socket's), added once it exists.
  void add_socket_dir(const std::string& dir);
  const std::vector<std::string>& socket_dirs() const { return socket_dirs_; }
  const std::vector<std::string>& file_dirs() const { return file_dirs_; }

 private:
  std::vector<std::string> socket_dirs_, file_dirs_;  // realpath'd
};

// Makes `path` free for a new listening socket: nothing there, or a stale
// socket (no one accepts on it), which is removed. Anything else (a file, a
// directory, a socket in use) is refused, not replaced. Throws with the
// reason.
void clear_stale_socket(const std::string& path);

}  // namespace sluice::control
