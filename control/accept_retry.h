// What an acceptor does after a failed accept. Out of file descriptors or
// memory (EMFILE, ENFILE, ENOBUFS, ENOMEM: a peer holding many connections,
// or the process at its fd limit), accepting again at once fails again at
// once: the loop would spin on a core and write a log line each time. So it
// retries after a pause, and logs at most once per interval (saying how many
// it left out). Any other error retries at once, logged the same way.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>

#include "dataplane/base/log.h"

namespace sluice::control {

class AcceptRetry {
 public:
  static constexpr std::chrono::milliseconds kPause{100};
  static constexpr std::chrono::seconds kLogInterval{10};

  AcceptRetry(boost::asio::io_context& io, std::string what) : timer_(io), what_(std::move(what)) {}

  // After accept failed with ec (not operation_aborted): calls again() now
  // or after the pause. again is dropped if the timer is cancelled (the
  // acceptor's owner is gone: the timer is its member).
  template <class F>
  void after_error(const boost::system::error_code& ec, F again) {
    const int e = ec.value();
    const bool exhausted = ec.category() == boost::system::system_category() &&
                           (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM);
    log(ec, exhausted);
    if (!exhausted) {
      again();
      return;
    }
    timer_.expires_after(kPause);
    timer_.async_wait([again = std::move(again)](boost::system::error_code tec) {
      if (!tec) again();
    });
  }
  uint64_t errors() const noexcept { return errors_; }

 private:
  void log(const boost::system::error_code& ec, bool exhausted) {
    ++errors_;
    const auto now = std::chrono::steady_clock::now();
    if (logged_once_ && now - last_log_ < kLogInterval) {
      ++unlogged_;
      return;
    }
    LOG_WARN("control", "%s: accept: %s%s (%llu more since the last report)", what_.c_str(), ec.message().c_str(),
             exhausted ? "; pausing before the next accept" : "", static_cast<unsigned long long>(unlogged_));
    logged_once_ = true;
    last_log_ = now;
    unlogged_ = 0;
  }

  boost::asio::steady_timer timer_;
  std::string what_;
  std::chrono::steady_clock::time_point last_log_{};
  bool logged_once_ = false;
  uint64_t unlogged_ = 0;
  uint64_t errors_ = 0;
};

}  // namespace sluice::control
