// An in-process vhost-user front-end over a socketpair (STYLE.md rule 14):
// sends any message, well-formed or not, and reads replies. Tests pump the
// back-end side by hand, so everything runs on one thread.
#pragma once

#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "dataplane/base/unique_fd.h"
#include "tests/support/mock_guest.h"
#include "vhost/channel.h"
#include "vhost/protocol.h"

namespace sluice::test {

class Frontend {
 public:
  Frontend() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
    front_.reset(sv[0]);
    back_.reset(sv[1]);
  }
  int front_fd() const { return front_.get(); }
  int back_fd() const { return back_.get(); }
  void close_front() { front_.reset(); }

  // Sends a raw message: any request number, flags, payload and fds.
  Status send(uint32_t request, std::span<const uint8_t> payload, std::span<const int> fds = {},
              uint32_t flags = vhost::kVersion) {
    vhost::MsgHeader h{request, flags, static_cast<uint32_t>(payload.size())};
    return vhost::send_message(front_fd(), h, payload, fds);
  }
  template <class T>
  Status send_struct(vhost::Request r, const T& v, std::span<const int> fds = {},
                     uint32_t flags = vhost::kVersion) {
    return send(static_cast<uint32_t>(r), {reinterpret_cast<const uint8_t*>(&v), sizeof v}, fds,
                flags);
  }
  Status send_empty(vhost::Request r, uint32_t flags = vhost::kVersion) {
    return send(static_cast<uint32_t>(r), {}, {}, flags);
  }
  // Reads one reply.
  Status recv(vhost::Message& m) { return vhost::recv_message(front_fd(), m); }

  // SET_MEM_TABLE payload and fds describing every region of a mock guest.
  struct Table {
    std::vector<uint8_t> payload;
    std::vector<UniqueFd> fds;
    std::vector<int> raw() const {
      std::vector<int> v;
      for (auto& f : fds) v.push_back(f.get());
      return v;
    }
  };
  static Table mem_table_of(const MockGuest& g);
  // The front-end user address of a guest physical address in a mock guest.
  static uint64_t uva_of(const MockGuest& g, uint64_t gpa);

 private:
  UniqueFd front_, back_;
};

inline UniqueFd make_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)); }

}  // namespace sluice::test
