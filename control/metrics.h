// Metrics over HTTP in the Prometheus text format (version 0.0.4), served by
// Boost.Beast on the daemon's io_context: GET /metrics. Per export and queue:
// requests, bytes, errors, flushes, used-ring batch sizes (a histogram),
// broken and running state; per worker: time asleep and polling; per VFIO
// container: mappings and map calls. Anything else gets 404/405.
#pragma once

#include <boost/asio.hpp>

#include "control/accept_retry.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sluice::control {

class Daemon;

// Collects samples by metric family and renders them with one HELP/TYPE
// header per family, as Prometheus wants.
class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  void add(const std::string& family, const char* type, const char* help, const Labels& labels,
           double value, const std::string& suffix = "");
  std::string render() const;
  static std::string escape(const std::string& v);

 private:
  struct Family {
    std::string type, help;
    std::vector<std::string> lines;
  };
  std::map<std::string, Family> families_;
};

class MetricsServer {
 public:
  // host: an IP address ("127.0.0.1", "::1", "0.0.0.0"); port 0 picks one.
  MetricsServer(boost::asio::io_context& io, Daemon& d, const std::string& host, uint16_t port);
  void start();  // binds and listens; throws on failure
  void stop();
  uint16_t port() const;

 private:
  void accept();
  Daemon& daemon_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::ip::tcp::endpoint ep_;
  AcceptRetry retry_;
  // Open connections (shared with each one, which may outlive the server):
  // past kMaxConns a new one is closed at once.
  static constexpr unsigned kMaxConns = 32;
  std::shared_ptr<unsigned> open_ = std::make_shared<unsigned>(0);
};

// "HOST:PORT" ("[::1]:9310" for IPv6). Throws std::invalid_argument.
std::pair<std::string, uint16_t> parse_listen(const std::string& s);

}  // namespace sluice::control
