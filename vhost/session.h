// One vhost-user session: the back-end state a single front-end connection
// negotiates (features, memory, vrings), and the handlers for its messages.
// Transport-free: the caller reads a Message, calls handle(), and sends what
// it returns. The device model behind it is a VirtioDevice.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/log.h"
#include "dataplane/base/result.h"
#include "dataplane/base/unique_fd.h"
#include "dataplane/device/virtio_device.h"
#include "dataplane/memory/guest_memory.h"
#include "dataplane/virtq/split_queue.h"
#include "vhost/channel.h"

namespace sluice::vhost {

// Protocol features this back-end offers.
inline constexpr uint64_t kOfferedProtocolFeatures =
    (1ull << kPfMq) | (1ull << kPfReplyAck) | (1ull << kPfConfig) | (1ull << kPfResetDevice) |
    (1ull << kPfConfigureMemSlots) | (1ull << kPfStatus) | (1ull << kPfInflightShmfd);

// What handle() wants sent back.
struct Response {
  bool send = false;
  MsgHeader hdr{};
  std::vector<uint8_t> payload;
  std::vector<int> fds;  // borrowed from the session
  bool close = false;    // the session must end (after sending, if any)
  Error error{};         // why the message was refused, when it was
};

class Session {
 public:
  explicit Session(VirtioDevice& device, std::string name = "vhost");
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Checks and handles one message.
  Response handle(Message& m);
  // Front-end gone: stop every queue, reset the device.
  void disconnect();

  uint64_t features() const noexcept { return features_; }
  uint64_t protocol_features() const noexcept { return protocol_features_; }
  bool queue_running(uint16_t i) const { return i < vrings_.size() && vrings_[i]->running; }
  // The call eventfd the front-end gave for queue i (-1: none).
  int call_fd(uint16_t i) const { return i < vrings_.size() ? vrings_[i]->call.get() : -1; }
  const GuestMemory& memory() const noexcept { return memory_; }
  // Bounds on this session's guest memory (the export's): a SET_MEM_TABLE
  // or ADD_MEM_REG past them is refused.
  void set_memory_limits(const MemoryLimits& l) { memory_.set_limits(l); }
  // Listeners of this session's guest memory (the VFIO DMA mapper's bridge).
  // A listener's error refuses the memory message that caused it.
  void add_memory_listener(MemoryListener* l) { memory_.add_listener(l); }
  void remove_memory_listener(MemoryListener* l) { memory_.remove_listener(l); }

 private:
  struct Vring {
    uint32_t num = 0;
    VringAddr addr{};
    bool addr_set = false;
    uint16_t base = 0;
    UniqueFd kick, call, err;
    bool kick_set = false;  // SET_VRING_KICK seen (with or without an fd)
    bool enabled = false;
    bool running = false;
    virtq::SplitQueue queue;
  };

  Status dispatch(Message& m, Response& r);
  Status set_mem_table(Message& m);
  Status set_vring_fd(Message& m, Request which);
  Status set_vring_addr(const VringAddr& a);
  Status get_inflight(const Inflight& req, Response& r, const Message& m);
  Status set_inflight(Message& m);
  std::byte* inflight_region(uint16_t index, uint32_t num) const;
  bool any_ring_running() const;
  LogLimit log_limit_;  // refusals of this peer's messages
  Result<Vring*> vring(uint32_t index);
  // Starts the ring if it may run (kick seen, enabled, set up).
  Status maybe_start(uint16_t index);
  void stop(uint16_t index);
  // Stops running rings around a memory change and restarts them after.
  template <class F>
  Status with_rings_stopped(F&& change);
  void reset_rings();
  bool protocol_negotiated() const noexcept { return (features_ >> kFProtocolFeatures) & 1; }

  VirtioDevice& device_;
  std::string name_;
  GuestMemory memory_;
  std::vector<std::unique_ptr<Vring>> vrings_;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  bool protocol_set_ = false;  // SET_PROTOCOL_FEATURES seen
  uint8_t status_ = 0;
  // The inflight-tracking region (INFLIGHT_SHMFD): ours after GET_INFLIGHT_FD,
  // the front-end's after SET_INFLIGHT_FD. It outlives a back-end crash
  // because the front-end keeps the fd.
  UniqueFd inflight_fd_;
  MappedRegion inflight_map_;
  fault::Guard inflight_guard_;  // after the mapping: unregistered before it is unmapped
  std::byte* inflight_base_ = nullptr;
  uint16_t inflight_queues_ = 0;
  uint16_t inflight_qsize_ = 0;
};

}  // namespace sluice::vhost
