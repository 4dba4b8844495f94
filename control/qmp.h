// A QMP client (QEMU Machine Protocol, JSON over a unix socket; Boost.JSON):
// connect, negotiate capabilities, execute commands, wait for events. It is
// blocking with a deadline on every step, and is run off the control thread
// (an attach can take seconds while QEMU realizes a device).
//
// Errors are exceptions (control/ may throw): QmpError carries QEMU's own
// error class and description verbatim; anything else (not a QMP socket,
// timeout, the VMM went away) is a std::runtime_error saying so.
#pragma once

#include <boost/json.hpp>

#include <chrono>
#include <deque>
#include <stdexcept>
#include <string>

namespace sluice::control {

struct QmpError : std::runtime_error {
  QmpError(std::string cls, std::string desc)
      : std::runtime_error(cls + ": " + desc), error_class(std::move(cls)), description(std::move(desc)) {}
  std::string error_class, description;
};

class QmpClient {
 public:
  using Clock = std::chrono::steady_clock;
  // Connects, reads the greeting (refusing anything that is not QEMU's) and
  // sends qmp_capabilities. Every step has a deadline, the connect too (a
  // VMM whose listen backlog is full); `cancel_fd` (an eventfd, or -1)
  // ends any wait at once when it becomes readable (the daemon stopping).
  explicit QmpClient(const std::string& socket_path,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5), int cancel_fd = -1);
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs one command; returns its "return" value, or throws QmpError.
  boost::json::value execute(const std::string& command, const boost::json::object& args = {},
                             std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Waits for an event named `name` whose data has data[key] == value (any
  // data when key is empty). Events seen earlier are kept and searched first.
  boost::json::object wait_event(const std::string& name, const std::string& key, const std::string& value,
                                 std::chrono::milliseconds timeout);
  // The greeting's QEMU version ("7.2.0").
  const std::string& version() const noexcept { return version_; }

 private:
  boost::json::object read_message(Clock::time_point deadline);
  void send(const boost::json::object& msg);
  // Waits for `events` on the socket until the deadline or a cancel; throws.
  void wait_for(short events, Clock::time_point deadline);

  int fd_ = -1;
  int cancel_fd_ = -1;
  std::string buf_;
  std::deque<boost::json::object> events_;
  uint64_t next_id_ = 1;
  std::string version_;
};

}  // namespace sluice::control
