// Reading and writing vhost-user messages on a unix stream socket, with fds
// passed by SCM_RIGHTS. Blocking I/O; the caller decides when the socket is
// readable.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "vhost/protocol.h"

namespace sluice::vhost {

struct Message {
  MsgHeader hdr{};
  std::array<uint8_t, kMaxPayload> payload{};
  std::vector<UniqueFd> fds;

  // The payload as a wire struct (sizes are checked before handlers run).
  template <class T>
  T as() const noexcept {
    static_assert(sizeof(T) <= kMaxPayload);
    T v;
    std::memcpy(&v, payload.data(), sizeof v);
    return v;
  }
};

// Receives one message. Errors: kPeerClosed (orderly EOF before a header),
// kMsgTruncated (short header/payload, or fds cut off), kMsgTooLarge (the
// stream cannot be resynchronised), kSystem. Received fds are owned by m.
Status recv_message(int sock, Message& m);

// Sends one message with optional fds.
Status send_message(int sock, const MsgHeader& h, std::span<const uint8_t> payload,
                    std::span<const int> fds = {});

}  // namespace sluice::vhost
