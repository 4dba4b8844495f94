// libFuzzer target: vhost::MessageReader, the back-end's assembly of
// vhost-user messages from a stream a hostile front-end cuts wherever it
// likes. The input is a list of chunks, each a control byte (length 1..64,
// whether an eventfd rides on it) and that many stream bytes, written to a
// socketpair one at a time with a read() after each. The oracle: every
// message the reader returns is exactly the next header and payload of the
// stream written, with at most kMaxFds fds; a read never blocks; at the end
// of the stream the reader says whether it stopped on a boundary
// (kPeerClosed) or inside a message (kMsgTruncated).
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "vhost/channel.h"

using namespace sluice;
using namespace sluice::vhost;

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_channel: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  UniqueFd front(sv[0]), back(sv[1]);
  std::string stream;  // everything written so far
  size_t consumed = 0;  // stream bytes the reader has returned as messages
  MessageReader rd;
  bool stopped = false;  // the reader returned an error: the session would end
  auto drain = [&]() {
    while (!stopped) {
      auto got = rd.read(back.get());
      if (!got.ok()) {
        Errc e = got.error().code;
        // Only a size past the bound or too many fds end a live stream.
        check(e == Errc::kMsgTooLarge || e == Errc::kMsgBadFdCount || e == Errc::kMsgTruncated,
              "unexpected error on a live stream");
        if (e == Errc::kMsgTooLarge) {
          MsgHeader h;
          check(stream.size() - consumed >= sizeof h, "too large before a whole header");
          std::memcpy(&h, stream.data() + consumed, sizeof h);
          check(h.size > kMaxPayload, "too large, but the header's size is within the bound");
        }
        stopped = true;
        return;
      }
      if (!got.value()) return;  // the rest has not been written yet
      const Message& m = rd.message();
      const size_t n = sizeof(MsgHeader) + m.hdr.size;
      check(m.hdr.size <= kMaxPayload, "a payload past the bound");
      check(stream.size() - consumed >= n, "a message longer than what was written");
      check(std::memcmp(stream.data() + consumed, &m.hdr, sizeof m.hdr) == 0, "header differs from the stream");
      check(std::memcmp(stream.data() + consumed + sizeof m.hdr, m.payload.data(), m.hdr.size) == 0,
            "payload differs from the stream");
      check(m.fds.size() <= kMaxFds, "more fds than a message may carry");
      consumed += n;
      rd.next();
    }
  };
  while (size > 0 && !stopped) {
    uint8_t c = data[0];
    size_t len = std::min<size_t>((c & 0x3f) + 1, size - 1);
    ++data;
    --size;
    if (len == 0) break;
    iovec iov{const_cast<uint8_t*>(data), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    UniqueFd ev;
    if (c & 0x40) {
      ev.reset(::eventfd(0, EFD_CLOEXEC));
      int fd = ev.get();
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    if (::sendmsg(front.get(), &msg, MSG_DONTWAIT) != static_cast<ssize_t>(len)) break;
    stream.append(reinterpret_cast<const char*>(data), len);
    data += len;
    size -= len;
    drain();
  }
  if (!stopped) {
    front.reset();  // the front-end goes: on a boundary or inside a message
    auto got = rd.read(back.get());
    check(!got.ok(), "a read after the end of the stream succeeded");
    if (consumed == stream.size())
      check(got.error() == Errc::kPeerClosed, "stream ended on a boundary, but not kPeerClosed");
    else
      check(got.error() == Errc::kMsgTruncated || got.error() == Errc::kMsgTooLarge ||
                got.error() == Errc::kMsgBadFdCount,
            "stream ended inside a message, but not kMsgTruncated");
  }
  return 0;
}
