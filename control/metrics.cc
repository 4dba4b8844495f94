#include "control/metrics.h"

// Beast's parser trips GCC's -Wmaybe-uninitialized under the sanitizers (a
// false positive inside boost::optional); the warning stays on for our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdio>
#include <memory>
#include <stdexcept>

#include "control/daemon.h"
#include "dataplane/base/log.h"

namespace sluice::control {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string MetricsText::escape(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\' || c == '"') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

void MetricsText::add(const std::string& family, const char* type, const char* help, const Labels& labels,
                      double value, const std::string& suffix) {
  Family& f = families_[family];
  f.type = type;
  f.help = help;
  std::string line = family + suffix;
  if (!labels.empty()) {
    line += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) line += ',';
      line += labels[i].first + "=\"" + escape(labels[i].second) + '"';
    }
    line += '}';
  }
  char num[64];
  std::snprintf(num, sizeof num, " %.17g", value);
  f.lines.push_back(line + num);
}

std::string MetricsText::render() const {
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n";
    out += "# TYPE " + name + " " + f.type + "\n";
    for (const auto& l : f.lines) out += l + "\n";
  }
  return out;
}

std::pair<std::string, uint16_t> parse_listen(const std::string& s) {
  std::string host;
  std::string port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw std::invalid_argument("expected [IPv6]:PORT");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("expected HOST:PORT, e.g. 127.0.0.1:9310");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  boost::system::error_code ec;
  (void)asio::ip::make_address(host, ec);
  if (ec) throw std::invalid_argument("'" + host + "' is not an IP address");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port) > 65535)
    throw std::invalid_argument("port must be 0..65535");
  return {host, static_cast<uint16_t>(std::stoul(port))};
}

namespace {

struct HttpConn : std::enable_shared_from_this<HttpConn> {
  HttpConn(tcp::socket s, Daemon& d, std::shared_ptr<unsigned> n)
      : stream(std::move(s)), daemon(d), open(std::move(n)) {
    ++*open;
  }
  ~HttpConn() { --*open; }
  HttpConn(const HttpConn&) = delete;
  HttpConn& operator=(const HttpConn&) = delete;
  beast::tcp_stream stream;
  Daemon& daemon;
  std::shared_ptr<unsigned> open;
  beast::flat_buffer buf;
  http::request_parser<http::empty_body> parser;
  http::response<http::string_body> res;

  void run() {
    parser.header_limit(8 * 1024);
    stream.expires_after(std::chrono::seconds(5));  // a slow client cannot hold the daemon
    auto self = shared_from_this();
    http::async_read(stream, buf, parser, [self](beast::error_code ec, size_t) {
      if (ec) return;
      self->respond(self->parser.get());
    });
  }
  void respond(const http::request<http::empty_body>& req) {
    res.version(req.version());
    res.keep_alive(false);
    res.set(http::field::server, "sluiced");
    if (req.target() != "/metrics") {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "text/plain");
      res.body() = "not found: try /metrics\n";
    } else if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res.result(http::status::method_not_allowed);
      res.set(http::field::allow, "GET, HEAD");
      res.body() = "GET /metrics\n";
    } else {
      res.result(http::status::ok);
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      if (req.method() == http::verb::get) res.body() = daemon.metrics_text();
    }
    res.prepare_payload();
    auto self = shared_from_this();
    http::async_write(stream, res, [self](beast::error_code, size_t) {
      beast::error_code ignore;
      self->stream.socket().shutdown(tcp::socket::shutdown_send, ignore);
    });
  }
};

}  // namespace

MetricsServer::MetricsServer(asio::io_context& io, Daemon& d, const std::string& host, uint16_t port)
    : daemon_(d), acceptor_(io), ep_(asio::ip::make_address(host), port), retry_(io, "metrics") {}

void MetricsServer::start() {
  acceptor_.open(ep_.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  acceptor_.bind(ep_);
  acceptor_.listen();
  accept();
}

void MetricsServer::stop() {
  boost::system::error_code ignore;
  acceptor_.close(ignore);
}

uint16_t MetricsServer::port() const {
  boost::system::error_code ec;
  auto ep = acceptor_.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void MetricsServer::accept() {
  acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
    if (ec) {
      if (ec != asio::error::operation_aborted && acceptor_.is_open())
        retry_.after_error(ec, [this] {
          if (acceptor_.is_open()) accept();
        });
      return;
    }
    if (*open_ >= kMaxConns) {
      boost::system::error_code ignore;
      s.close(ignore);  // a scraper needs one; this many is a client holding them
    } else {
      std::make_shared<HttpConn>(std::move(s), daemon_, open_)->run();
    }
    accept();
  });
}

}  // namespace sluice::control
