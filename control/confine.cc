#include "control/confine.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace sluice::control {

namespace {

std::string real(const std::string& dir, const char* what) {
  char buf[PATH_MAX];
  if (::realpath(dir.c_str(), buf) == nullptr)
    throw std::runtime_error(std::string(what) + " " + dir + ": " + std::strerror(errno));
  struct stat st{};
  if (::stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error(std::string(what) + " " + dir + ": not a directory");
  return buf;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

Confinement::Confinement(const std::vector<std::string>& socket_dirs, const std::vector<std::string>& file_dirs) {
  for (const std::string& d : socket_dirs) socket_dirs_.push_back(real(d, "socket directory"));
  for (const std::string& d : file_dirs) file_dirs_.push_back(real(d, "file directory"));
}

void Confinement::add_socket_dir(const std::string& dir) { socket_dirs_.push_back(real(dir, "socket directory")); }

void Confinement::check_socket(const std::string& path, const ApiCaller& c) const {
  if (c.owner) return;
  if (socket_dirs_.empty())
    throw PermissionError("path=" + path + ": " + c.who() +
                             " may create sockets only in a socket directory, and none is configured (--socket-dir)");
  auto slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (name.empty() || name == "." || name == "..")
    throw std::runtime_error("path=" + path + ": not a file name");
  char buf[PATH_MAX];
  std::string rdir = ::realpath(dir.c_str(), buf) != nullptr ? buf : "";
  for (const std::string& d : socket_dirs_)
    if (rdir == d) return;
  throw PermissionError("path=" + path + ": " + c.who() + " may create sockets only directly in " +
                           joined(socket_dirs_));
}

UniqueFd Confinement::open_file(const std::string& path, bool create, const ApiCaller& c) const {
  if (c.owner) return UniqueFd{};
  if (file_dirs_.empty())
    throw PermissionError("file=" + path + ": " + c.who() +
                             " may name backing files only beneath a file directory, and none is configured (--file-dir)");
  for (const std::string& d : file_dirs_) {
    std::string prefix = d == "/" ? d : d + "/";
    if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) continue;
    std::string rel = path.substr(prefix.size());
    UniqueFd dirfd(::open(d.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dirfd) throw std::runtime_error("file directory " + d + ": " + std::strerror(errno));
    open_how how{};
    how.flags = create ? O_RDWR | O_CREAT | O_CLOEXEC : O_PATH | O_CLOEXEC;
    how.mode = create ? 0600 : 0;
    // Nothing beneath the directory may lead out of it: no "..", no
    // absolute symlink, no symlink out, no /proc magic link.
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long fd = ::syscall(SYS_openat2, dirfd.get(), rel.c_str(), &how, sizeof how);
    if (fd < 0) {
      int e = errno;
      if (e == EXDEV)
        throw PermissionError("file=" + path + ": leads outside " + d + " (a symlink or '..')");
      if (e == ENOSYS) throw std::runtime_error("file=" + path + ": openat2 needs Linux 5.6 or later");
      throw std::runtime_error("file=" + path + ": " + std::strerror(e));
    }
    return UniqueFd(static_cast<int>(fd));
  }
  throw PermissionError("file=" + path + ": " + c.who() + " may name backing files only beneath " +
                           joined(file_dirs_));
}

void Confinement::check_vmm(const std::string& path, const ApiCaller& c) const {
  if (c.owner) return;
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0)
    throw std::runtime_error("vmm " + path + ": " + std::strerror(errno));
  if (!S_ISSOCK(st.st_mode) || st.st_uid != c.uid)
    throw PermissionError("vmm " + path + ": " + c.who() + " may attach only to a QMP socket it owns");
}

void clear_stale_socket(const std::string& path) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw std::runtime_error(path + ": " + std::strerror(errno));
  }
  if (!S_ISSOCK(st.st_mode)) throw std::runtime_error(path + " exists and is not a socket: not replaced");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) throw std::runtime_error(path + ": path too long for a socket");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!s) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0 || errno == EAGAIN ||
      errno == EINPROGRESS)
    throw std::runtime_error(path + " is a socket in use by another process: not replaced");
  if (errno != ECONNREFUSED) throw std::runtime_error(path + ": " + std::strerror(errno));
  // Stale: no one listens. (Removed by name: a socket put there since is
  // the same kind of thing in a directory the daemon may write.)
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error("cannot remove the stale socket " + path + ": " + std::strerror(errno));
}

}  // namespace sluice::control
