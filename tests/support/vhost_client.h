// A blocking vhost-user front-end over a unix socket, for programs that talk
// to a running back-end (sluice-blkbench, the hostile-peer test): connect,
// send any request, wait for its reply or REPLY_ACK. Errors end the program
// with a message (test and benchmark tools only).
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "vhost/channel.h"
#include "vhost/protocol.h"

namespace sluice::test {

class VhostClient {
 public:
  explicit VhostClient(std::string tool) : tool_(std::move(tool)) {}
  ~VhostClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  VhostClient(const VhostClient&) = delete;
  VhostClient& operator=(const VhostClient&) = delete;

  [[noreturn]] void die(const std::string& m) const {
    std::fprintf(stderr, "%s: %s\n", tool_.c_str(), m.c_str());
    std::exit(1);
  }
  int fd() const { return fd_; }
  uint64_t protocol_features() const { return pf_; }
  void set_protocol_features(uint64_t pf) { pf_ = pf; }

  // Connects, retrying for up to 5 s while the back-end starts.
  void connect_to(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    for (int i = 0; i < 100; ++i) {
      if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return;
      ::usleep(50000);
    }
    die("cannot connect to " + path + ": " + std::strerror(errno));
  }
  // Sends a request; with `ack` (and REPLY_ACK negotiated) waits for the
  // back-end's answer and requires it to be 0 (done).
  void send(vhost::Request r, const void* p, size_t n, std::span<const int> fds = {}, bool ack = false) {
    if (try_send(r, p, n, fds, ack) != 0)
      die(std::string(vhost::request_name(static_cast<uint32_t>(r))) + " refused by the back-end");
  }
  // The same, returning the back-end's answer (0 without REPLY_ACK).
  uint64_t try_send(vhost::Request r, const void* p, size_t n, std::span<const int> fds = {}, bool ack = false) {
    const bool need = ack && (pf_ >> vhost::kPfReplyAck & 1);
    const uint32_t flags = vhost::kVersion | (need ? vhost::kFlagNeedReply : 0);
    vhost::MsgHeader h{static_cast<uint32_t>(r), flags, static_cast<uint32_t>(n)};
    if (!vhost::send_message(fd_, h, {static_cast<const uint8_t*>(p), n}, fds).ok())
      die("send " + std::string(vhost::request_name(h.request)));
    if (!need) return 0;
    vhost::Message m;
    if (!vhost::recv_message(fd_, m).ok()) die("no answer to " + std::string(vhost::request_name(h.request)));
    return m.as<uint64_t>();
  }
  // Sends and requires the back-end's acknowledgement.
  template <class T>
  void send_v(vhost::Request r, const T& v, std::span<const int> fds = {}) {
    send(r, &v, sizeof v, fds, true);
  }
  // A request with a reply of its own (GET_*).
  vhost::Message call(vhost::Request r, const void* p = nullptr, size_t n = 0, std::span<const int> fds = {}) {
    send(r, p, n, fds);
    vhost::Message m;
    if (!vhost::recv_message(fd_, m).ok())
      die("no reply to " + std::string(vhost::request_name(static_cast<uint32_t>(r))));
    return m;
  }

 private:
  std::string tool_;
  int fd_ = -1;
  uint64_t pf_ = 0;
};

}  // namespace sluice::test
