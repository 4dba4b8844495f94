// libFuzzer target: sequences of vhost-user messages into one back-end
// session. The input is a list of records: request (1 byte), flags (1 byte),
// fd kinds (1 byte: count and type), payload length (1 byte), payload. fds are
// real: eventfds, memfds of guest memory, or a pipe. The session must refuse
// what is malformed, never crash, leak or touch memory it did not map.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tests/support/mock_guest.h"
#include "vhost/session.h"

using namespace sluice;
using namespace sluice::vhost;

namespace {

struct Device : VirtioDevice {
  uint8_t cfg[16] = {};
  uint32_t device_id() const override { return 2; }
  uint64_t device_features() const override {
    return (1ull << virtq::kFVersion1) | (1ull << virtq::kFEventIdx) |
           (1ull << virtq::kFIndirectDesc) | (1ull << virtq::kFInOrder);
  }
  uint16_t max_queues() const override { return 2; }
  std::span<const uint8_t> config() const override { return cfg; }
  Status write_config(uint32_t, std::span<const uint8_t>) override { return {}; }
  void set_driver_features(uint64_t) override {}
  Status queue_started(const QueueBinding& b) override {
    // Serve the ring once, as a worker would, to exercise the memory it uses.
    virtq::Chain c;
    for (int i = 0; i < 8; ++i) {
      auto r = b.queue->pop(c);
      if (!r.ok() || !r.value()) break;
      b.queue->push(c.head(), 0);
    }
    b.queue->flush();
    return {};
  }
  void queue_stopped(uint16_t) override {}
  void call_fd_changed(uint16_t, int) override {}
  void reset() override {}
};

UniqueFd make_fd(uint8_t kind) {
  switch (kind % 3) {
    case 0: return UniqueFd(::eventfd(0, EFD_CLOEXEC));
    case 1: return test::make_memfd(1u << 20);
    default: {
      int p[2];
      if (::pipe(p) != 0) return {};
      ::close(p[1]);
      return UniqueFd(p[0]);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Device dev;
  Session s(dev, "fuzz");
  while (size >= 4) {
    Message m;
    m.hdr.request = data[0] % 45;
    m.hdr.flags = (data[1] & 0x80) ? data[1] : (kVersion | (data[1] & kFlagNeedReply));
    unsigned nfds = data[2] & 0x7;
    uint8_t kinds = data[2] >> 3;
    size_t len = data[3];
    data += 4;
    size -= 4;
    if (len > size) len = size;
    // Payload: the fuzzer's bytes; small addresses are pulled into the 1 MiB
    // memfds' range so mappings and rings are hit often.
    m.hdr.size = static_cast<uint32_t>(len);
    std::memcpy(m.payload.data(), data, len);
    data += len;
    size -= len;
    for (unsigned i = 0; i < nfds; ++i) m.fds.push_back(make_fd(static_cast<uint8_t>(kinds + i)));
    Response r = s.handle(m);
    if (r.close) break;
  }
  return 0;
}
