#include "vhost/channel.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

namespace sluice::vhost {

namespace {

// Reads exactly n bytes (after a first chunk that may already be in).
Status read_full(int sock, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(sock, p, n, MSG_WAITALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno);
    }
    if (r == 0) return Errc::kMsgTruncated;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return {};
}

// Takes ownership of every fd a received message carried.
void take_fds(msghdr& msg, std::vector<UniqueFd>& out) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      // SAFETY: n counts whole ints inside this cmsg's data.
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.emplace_back(fd);
    }
  }
}

}  // namespace

Status recv_message(int sock, Message& m) {
  m.fds.clear();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{&m.hdr, sizeof m.hdr};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return Error::from_errno(errno);
  if (r == 0) return Errc::kPeerClosed;
  // Take ownership of every fd that arrived before deciding anything, so none
  // leaks on an error path.
  take_fds(msg, m.fds);
  if (msg.msg_flags & MSG_CTRUNC) return Errc::kMsgTruncated;
  if (static_cast<size_t>(r) < sizeof m.hdr) {
    SLUICE_TRY(read_full(sock, reinterpret_cast<uint8_t*>(&m.hdr) + r,
                         sizeof m.hdr - static_cast<size_t>(r)));
  }
  if (m.hdr.size > kMaxPayload) return Errc::kMsgTooLarge;
  return read_full(sock, m.payload.data(), m.hdr.size);
}

Result<bool> MessageReader::read(int sock) {
  constexpr size_t kHdr = sizeof(MsgHeader);
  for (;;) {
    const size_t want = got_ < kHdr ? kHdr - got_ : kHdr + m_.hdr.size - got_;
    if (want == 0) return true;
    uint8_t* dst = got_ < kHdr ? reinterpret_cast<uint8_t*>(&m_.hdr) + got_ : m_.payload.data() + (got_ - kHdr);
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    iovec iov{dst, want};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t r;
    do {
      r = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      return Error::from_errno(errno);
    }
    // Own every fd that came before deciding anything, so none leaks.
    take_fds(msg, m_.fds);
    if (msg.msg_flags & MSG_CTRUNC) return Errc::kMsgTruncated;
    if (m_.fds.size() > kMaxFds) return Errc::kMsgBadFdCount;
    if (r == 0) return got_ == 0 ? Errc::kPeerClosed : Errc::kMsgTruncated;
    got_ += static_cast<size_t>(r);
    if (got_ == kHdr && m_.hdr.size > kMaxPayload) return Errc::kMsgTooLarge;
  }
}

void MessageReader::next() noexcept {
  got_ = 0;
  m_.hdr = MsgHeader{};
  m_.fds.clear();
}

Status send_message(int sock, const MsgHeader& h, std::span<const uint8_t> payload,
                    std::span<const int> fds, bool nonblocking) {
  if (fds.size() > kMaxFds || payload.size() > kMaxPayload) return Errc::kInvalidArgument;
  iovec iov[2] = {{const_cast<MsgHeader*>(&h), sizeof h},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = payload.empty() ? 1 : 2;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  size_t total = sizeof h + payload.size();
  ssize_t r;
  do {
    r = ::sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return Error::from_errno(errno);
  if (static_cast<size_t>(r) != total) return Errc::kMsgTruncated;  // stream sockets: rare
  return {};
}

}  // namespace sluice::vhost
