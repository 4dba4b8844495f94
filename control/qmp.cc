#include "control/qmp.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice::control {

namespace json = boost::json;

namespace {
constexpr size_t kMaxMessage = 1 << 20;  // QEMU's answers are far smaller
}

QmpClient::QmpClient(const std::string& path, std::chrono::milliseconds timeout, int cancel_fd)
    : cancel_fd_(cancel_fd) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) throw std::runtime_error("bad QMP socket path '" + path + "'");
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  // Non-blocking throughout: every wait is a poll with a deadline.
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) break;
    int e = errno;
    // A unix socket whose backlog is full answers EAGAIN: try again until
    // the deadline (there is no completion to wait for).
    if ((e == EAGAIN || e == EINTR) && Clock::now() < deadline) {
      pollfd c{cancel_fd_, POLLIN, 0};
      if (::poll(&c, cancel_fd_ >= 0 ? 1 : 0, 10) > 0) e = ECANCELED;  // 10 ms between tries
      else continue;
    }
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error("cannot connect to " + path + ": " +
                             (e == EAGAIN ? std::string("it accepts no connection (timed out)")
                              : e == ECANCELED ? std::string("cancelled: the daemon is stopping")
                                               : std::string(std::strerror(e))));
  }
  json::object greeting;
  try {
    greeting = read_message(deadline);
  } catch (const std::exception& e) {
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error(path + " is not a QMP socket (" + e.what() + ")");
  }
  const json::value* qmp = greeting.if_contains("QMP");
  if (qmp == nullptr || !qmp->is_object()) {
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error(path + " is not a QMP socket (no QMP greeting)");
  }
  try {
    const auto& v = qmp->as_object().at("version").as_object().at("qemu").as_object();
    version_ = std::to_string(v.at("major").to_number<int>()) + "." + std::to_string(v.at("minor").to_number<int>()) +
               "." + std::to_string(v.at("micro").to_number<int>());
  } catch (const std::exception&) {
    version_ = "unknown";
  }
  execute("qmp_capabilities", {}, timeout);
}

QmpClient::~QmpClient() {
  if (fd_ >= 0) ::close(fd_);
}

void QmpClient::wait_for(short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw std::runtime_error("timed out waiting for the VMM");
    pollfd p[2] = {{fd_, events, 0}, {cancel_fd_, POLLIN, 0}};
    int r = ::poll(p, cancel_fd_ >= 0 ? 2 : 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (r == 0) throw std::runtime_error("timed out waiting for the VMM");
    if (cancel_fd_ >= 0 && (p[1].revents & POLLIN)) throw std::runtime_error("cancelled: the daemon is stopping");
    return;
  }
}

void QmpClient::send(const json::object& msg) {
  std::string s = json::serialize(msg) + "\r\n";
  size_t off = 0;
  auto deadline = Clock::now() + std::chrono::seconds(5);  // a VMM that reads nothing
  while (off < s.size()) {
    ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        wait_for(POLLOUT, deadline);
        continue;
      }
      throw std::runtime_error(std::string("the VMM went away (send: ") + std::strerror(errno) + ")");
    }
    off += static_cast<size_t>(n);
  }
}

json::object QmpClient::read_message(Clock::time_point deadline) {
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      json::value v;
      try {
        v = json::parse(line);
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("malformed JSON from the VMM: ") + e.what());
      }
      if (!v.is_object()) throw std::runtime_error("the VMM sent JSON that is not an object");
      return v.as_object();
    }
    if (buf_.size() > kMaxMessage) throw std::runtime_error("the VMM sent a message over 1 MiB");
    wait_for(POLLIN, deadline);
    char tmp[4096];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n == 0) throw std::runtime_error("the VMM closed the QMP connection");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw std::runtime_error(std::string("the VMM went away (") + std::strerror(errno) + ")");
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

json::value QmpClient::execute(const std::string& command, const json::object& args,
                               std::chrono::milliseconds timeout) {
  uint64_t id = next_id_++;
  json::object msg{{"execute", command}, {"id", id}};
  if (!args.empty()) msg["arguments"] = args;
  send(msg);
  auto deadline = Clock::now() + timeout;
  for (;;) {
    json::object m = read_message(deadline);
    if (m.contains("event")) {
      events_.push_back(std::move(m));
      if (events_.size() > 256) events_.pop_front();
      continue;
    }
    const json::value* mid = m.if_contains("id");
    if (mid == nullptr || !mid->is_number() || mid->to_number<uint64_t>() != id) continue;  // not ours
    if (const json::value* e = m.if_contains("error")) {
      std::string cls = "GenericError", desc;
      if (e->is_object()) {
        if (auto* c = e->as_object().if_contains("class"); c && c->is_string()) cls = std::string(c->as_string());
        if (auto* d = e->as_object().if_contains("desc"); d && d->is_string()) desc = std::string(d->as_string());
      }
      throw QmpError(cls, desc);
    }
    if (const json::value* r = m.if_contains("return")) return *r;
    throw std::runtime_error("the VMM answered '" + command + "' with neither return nor error");
  }
}

json::object QmpClient::wait_event(const std::string& name, const std::string& key, const std::string& value,
                                   std::chrono::milliseconds timeout) {
  auto matches = [&](const json::object& ev) {
    if (!ev.contains("event") || !ev.at("event").is_string() || ev.at("event").as_string() != name) return false;
    if (key.empty()) return true;
    const json::value* d = ev.if_contains("data");
    if (d == nullptr || !d->is_object()) return false;
    const json::value* v = d->as_object().if_contains(key);
    return v != nullptr && v->is_string() && v->as_string() == value;
  };
  for (auto it = events_.begin(); it != events_.end(); ++it)
    if (matches(*it)) {
      json::object ev = std::move(*it);
      events_.erase(it);
      return ev;
    }
  auto deadline = Clock::now() + timeout;
  for (;;) {
    json::object m = read_message(deadline);
    if (m.contains("event")) {
      if (matches(m)) return m;
      events_.push_back(std::move(m));
      if (events_.size() > 256) events_.pop_front();
    }
  }
}

}  // namespace sluice::control
