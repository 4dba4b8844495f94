// Reading and writing vhost-user messages on a unix stream socket, with fds
// passed by SCM_RIGHTS. recv_message/send_message block (front-ends in
// tests, benchmarks); a back-end serving untrusted peers from one thread
// uses MessageReader and send_message(..., nonblocking), which never wait.
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

// Assembles one message from whatever the socket has, across as many reads
// as the peer takes to send it (it may stall, split a message anywhere, or
// send the next before this one is handled). Never blocks: each read() takes
// only what is there (MSG_DONTWAIT), and only up to the end of the current
// message, so pipelined messages stay in the socket in order.
class MessageReader {
 public:
  // true: message() is whole (call next() before reading on); false: the
  // rest has not arrived yet. Errors as recv_message's, and kMsgBadFdCount
  // when one message's parts carry more than kMaxFds fds.
  Result<bool> read(int sock);
  Message& message() noexcept { return m_; }
  // Ready for the next message (the last one's fds are closed).
  void next() noexcept;
  // Bytes of the current message received so far.
  size_t pending() const noexcept { return got_; }

 private:
  Message m_;
  size_t got_ = 0;
};

// Sends one message with optional fds. nonblocking: a socket whose buffer
// cannot take the whole message now (the peer is not reading its replies)
// is an error (kMsgTruncated or EAGAIN), never a wait.
Status send_message(int sock, const MsgHeader& h, std::span<const uint8_t> payload,
                    std::span<const int> fds = {}, bool nonblocking = false);

}  // namespace sluice::vhost
