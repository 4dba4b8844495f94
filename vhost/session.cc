#include "vhost/session.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "dataplane/base/log.h"
#include "dataplane/virtq/inflight.h"

namespace sluice::vhost {

namespace {

bool is_eventfd(int fd) {
  char path[64];
  char target[64] = {};
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = ::readlink(path, target, sizeof target - 1);
  return n > 0 && std::strcmp(target, "anon_inode:[eventfd]") == 0;
}

// An eventfd a front-end gave us is only ever used without blocking: a
// worker reading a kick the peer already drained, or writing a call whose
// counter the peer saturated, moves on instead of stopping every queue it
// serves. (The flag is on the open file, which the peer shares; QEMU and
// DPDK make their eventfds non-blocking themselves.)
Status make_nonblocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ((fl & O_NONBLOCK) == 0 && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0))
    return Error(Errc::kNotEventFd, errno);
  return {};
}

template <class T>
void reply_with(Response& r, const Message& m, const T& v) {
  r.send = true;
  r.hdr = MsgHeader{m.hdr.request, kVersion | kFlagReply, sizeof(T)};
  r.payload.resize(sizeof(T));
  std::memcpy(r.payload.data(), &v, sizeof(T));
}

// Feature bits that change how a running ring is laid out or read.
constexpr uint64_t kRingLayoutFeatures = (1ull << virtq::kFEventIdx) |
                                         (1ull << virtq::kFIndirectDesc) |
                                         (1ull << virtq::kFInOrder) | (1ull << virtq::kFVersion1);

}  // namespace

Session::Session(VirtioDevice& device, std::string name) : device_(device), name_(std::move(name)) {
  for (uint16_t i = 0; i < device.max_queues(); ++i) vrings_.push_back(std::make_unique<Vring>());
}

Session::~Session() { disconnect(); }

void Session::disconnect() {
  reset_rings();
  device_.reset();
  memory_.clear();
  features_ = protocol_features_ = 0;
  protocol_set_ = false;
  status_ = 0;
}

void Session::reset_rings() {
  for (uint16_t i = 0; i < vrings_.size(); ++i) {
    stop(i);
    Vring& v = *vrings_[i];
    v.queue.reset();
    v.num = 0;
    v.addr = VringAddr{};
    v.addr_set = false;
    v.base = 0;
    v.kick.reset();
    v.call.reset();
    v.err.reset();
    v.kick_set = v.enabled = false;
  }
}

Response Session::handle(Message& m) {
  Response r;
  Status s = check_message(m.hdr, m.payload.data(), m.fds.size(), protocol_features_);
  if (s.ok()) s = dispatch(m, r);
  auto req = static_cast<Request>(m.hdr.request);
  bool ack = (m.hdr.flags & kFlagNeedReply) && ((protocol_features_ >> kPfReplyAck) & 1) &&
             !has_reply(req);
  if (!s.ok()) {
    std::string_view rn = request_name(m.hdr.request);
    LOG_LIMITED(log_limit_, LogLevel::kWarn, "vhost", "%s: %.*s refused: %.*s", name_.c_str(),
                static_cast<int>(rn.size()), rn.data(), static_cast<int>(s.error().name().size()),
                s.error().name().data());
    r = Response{};
    r.error = s.error();
    if (ack) {
      reply_with<uint64_t>(r, m, 1);
    } else {
      // The front-end expects no answer, or one we cannot give: it would go on
      // believing the message took effect. End this session only.
      r.close = true;
    }
    return r;
  }
  if (ack) reply_with<uint64_t>(r, m, 0);
  return r;
}

Result<Session::Vring*> Session::vring(uint32_t index) {
  if (index >= vrings_.size()) return Errc::kVringIndexOutOfRange;
  return vrings_[index].get();
}

Status Session::dispatch(Message& m, Response& r) {
  switch (static_cast<Request>(m.hdr.request)) {
    case Request::kGetFeatures:
      reply_with<uint64_t>(r, m, device_.device_features() | (1ull << kFProtocolFeatures));
      return {};
    case Request::kSetFeatures: {
      auto v = m.as<uint64_t>();
      uint64_t offered = device_.device_features() | (1ull << kFProtocolFeatures);
      if (v & ~offered) return Errc::kFeatureNotOffered;
      bool any_running = false;
      for (auto& vr : vrings_) any_running |= vr->running;
      if (any_running && ((v ^ features_) & kRingLayoutFeatures)) return Errc::kQueueRunning;
      features_ = v;
      device_.set_driver_features(v & ~(1ull << kFProtocolFeatures));
      return {};
    }
    case Request::kSetOwner:
      return {};  // one front-end per session: ownership is the connection itself
    case Request::kResetOwner:
    case Request::kResetDevice:
      reset_rings();
      device_.reset();
      status_ = 0;
      return {};
    case Request::kSetMemTable:
      return set_mem_table(m);
    case Request::kSetVringNum: {
      auto st = m.as<VringState>();
      auto v = vring(st.index);
      if (!v.ok()) return v.error();
      if ((*v)->running) return Errc::kQueueRunning;
      uint32_t max = std::min<uint32_t>(virtq::kMaxQueueSize, device_.max_queue_size());
      if (st.num == 0 || st.num > max || (st.num & (st.num - 1)) != 0) return Errc::kQueueBadSize;
      (*v)->num = st.num;
      return {};
    }
    case Request::kSetVringAddr:
      return set_vring_addr(m.as<VringAddr>());
    case Request::kSetVringBase: {
      auto st = m.as<VringState>();
      auto v = vring(st.index);
      if (!v.ok()) return v.error();
      if ((*v)->running) return Errc::kQueueRunning;
      if (st.num > 0xffff) return Errc::kInvalidArgument;  // split rings: a 16-bit index
      (*v)->base = static_cast<uint16_t>(st.num);
      return {};
    }
    case Request::kGetVringBase: {
      auto st = m.as<VringState>();
      auto v = vring(st.index);
      if (!v.ok()) return v.error();
      if ((*v)->num == 0 || !(*v)->addr_set) return Errc::kVringNotConfigured;
      // The ring stops here; in-order completions still pending are published
      // by the queue's stop() before the base is read.
      stop(static_cast<uint16_t>(st.index));
      (*v)->kick_set = false;
      (*v)->kick.reset();
      reply_with(r, m, VringState{st.index, (*v)->base});
      return {};
    }
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return set_vring_fd(m, static_cast<Request>(m.hdr.request));
    case Request::kGetProtocolFeatures:
      reply_with<uint64_t>(r, m, kOfferedProtocolFeatures);
      return {};
    case Request::kSetProtocolFeatures: {
      auto v = m.as<uint64_t>();
      if (v & ~kOfferedProtocolFeatures) return Errc::kFeatureNotOffered;
      protocol_features_ = v;
      protocol_set_ = true;
      return {};
    }
    case Request::kGetQueueNum:
      reply_with<uint64_t>(r, m, device_.queue_num());
      return {};
    case Request::kSetVringEnable: {
      auto st = m.as<VringState>();
      auto v = vring(st.index);
      if (!v.ok()) return v.error();
      // QEMU sends this as soon as the back-end offers PROTOCOL_FEATURES,
      // before SET_FEATURES acks it (vhost-user-net disables its extra queue
      // pairs at init). The state is kept either way; it gates the ring only
      // once PROTOCOL_FEATURES is acked (see maybe_start).
      if (!protocol_negotiated() && !protocol_set_) return Errc::kMsgNotNegotiated;
      if (st.num > 1) return Errc::kInvalidArgument;
      (*v)->enabled = st.num == 1;
      if ((*v)->enabled) return maybe_start(static_cast<uint16_t>(st.index));
      stop(static_cast<uint16_t>(st.index));
      return {};
    }
    case Request::kGetConfig: {
      auto c = m.as<ConfigHeader>();
      auto cfg = device_.config();
      if (c.offset > cfg.size() || c.size > cfg.size() - c.offset) return Errc::kConfigOutOfRange;
      r.send = true;
      r.hdr = MsgHeader{m.hdr.request, kVersion | kFlagReply,
                        static_cast<uint32_t>(sizeof c + c.size)};
      r.payload.resize(sizeof c + c.size);
      std::memcpy(r.payload.data(), &c, sizeof c);
      std::memcpy(r.payload.data() + sizeof c, cfg.data() + c.offset, c.size);
      return {};
    }
    case Request::kSetConfig: {
      auto c = m.as<ConfigHeader>();
      auto cfg = device_.config();
      if (c.offset > cfg.size() || c.size > cfg.size() - c.offset) return Errc::kConfigOutOfRange;
      return device_.write_config(c.offset, {m.payload.data() + sizeof c, c.size});
    }
    case Request::kGetMaxMemSlots:
      reply_with<uint64_t>(r, m, std::min<uint64_t>(memory_.limits().max_regions, GuestMemory::kMaxRegions));
      return {};
    case Request::kAddMemReg: {
      auto s = m.as<SingleMemRegion>();
      RegionSpec spec{s.region.guest_phys, s.region.size, s.region.user_addr,
                      s.region.mmap_offset, std::move(m.fds[0])};
      return with_rings_stopped([&] { return memory_.add_region(std::move(spec)); });
    }
    case Request::kRemMemReg: {
      auto s = m.as<SingleMemRegion>();
      return with_rings_stopped([&] {
        return memory_.remove_region(s.region.guest_phys, s.region.size, s.region.user_addr);
      });
    }
    case Request::kGetInflightFd:
      return get_inflight(m.as<Inflight>(), r, m);
    case Request::kSetInflightFd:
      return set_inflight(m);
    case Request::kSetStatus: {
      auto v = m.as<uint64_t>();
      if (v > 0xff) return Errc::kInvalidArgument;
      status_ = static_cast<uint8_t>(v);
      return {};
    }
    case Request::kGetStatus:
      reply_with<uint64_t>(r, m, status_);
      return {};
    default:
      return Errc::kMsgUnknownRequest;  // check_message() let through a request we do not handle
  }
}

namespace {
Status check_inflight_shape(const Inflight& i, const VirtioDevice& dev) {
  if (i.num_queues == 0 || i.num_queues > dev.max_queues()) return Errc::kVringIndexOutOfRange;
  if (i.queue_size == 0 || i.queue_size > virtq::kMaxQueueSize ||
      (i.queue_size & (i.queue_size - 1)) != 0)
    return Errc::kQueueBadSize;
  return {};
}
}  // namespace

// The inflight region is not replaced under a running ring (its worker
// writes it per request).
bool Session::any_ring_running() const {
  return std::any_of(vrings_.begin(), vrings_.end(), [](const auto& r) { return r->running; });
}

Status Session::get_inflight(const Inflight& req, Response& r, const Message& m) {
  SLUICE_TRY(check_inflight_shape(req, device_));
  if (any_ring_running()) return Errc::kQueueRunning;
  uint64_t size = uint64_t{req.num_queues} * virtq::inflight_queue_bytes(req.queue_size);
  UniqueFd fd(::memfd_create("sluice-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return Error::from_errno(errno);
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return Error::from_errno(errno);
  // Sealed before it is handed out: the front-end can neither shrink it under
  // our mapping (SIGBUS) nor grow it.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return Error::from_errno(errno);
  auto map = MappedRegion::map_shared(fd.get(), size, 0, PROT_READ | PROT_WRITE);
  if (!map.ok()) return map.error();
  inflight_guard_.reset();
  inflight_map_ = std::move(map.value());  // a fresh memfd reads as zeroes: nothing in flight
  inflight_guard_ = fault::Guard(inflight_map_.data(), inflight_map_.size(),
                                 static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
  inflight_base_ = inflight_map_.data();
  inflight_fd_ = std::move(fd);
  inflight_queues_ = req.num_queues;
  inflight_qsize_ = req.queue_size;
  reply_with(r, m, Inflight{size, 0, req.num_queues, req.queue_size, 0});
  r.fds.push_back(inflight_fd_.get());
  return {};
}

Status Session::set_inflight(Message& m) {
  auto req = m.as<Inflight>();
  SLUICE_TRY(check_inflight_shape(req, device_));
  uint64_t size = uint64_t{req.num_queues} * virtq::inflight_queue_bytes(req.queue_size);
  if (req.mmap_size != size) return Errc::kMsgBadSize;
  if (req.mmap_offset % 64 != 0) return Errc::kQueueMisaligned;  // the region's fields are accessed atomically
  if (any_ring_running()) return Errc::kQueueRunning;
  UniqueFd fd = std::move(m.fds[0]);
  struct stat st{};
  uint64_t end;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return Errc::kRegionBadFd;
  if (__builtin_add_overflow(req.mmap_offset, size, &end) || end > static_cast<uint64_t>(st.st_size))
    return Errc::kRegionPastEndOfFile;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t slack = req.mmap_offset % page;
  auto map = MappedRegion::map_shared(fd.get(), size + slack, req.mmap_offset - slack,
                                      PROT_READ | PROT_WRITE);
  if (!map.ok()) return map.error();
  // A region the front-end made may be shrunk under us: faults in it are
  // survived (the ring that used it breaks), not fatal.
  inflight_guard_.reset();
  inflight_map_ = std::move(map.value());
  inflight_guard_ = fault::Guard(inflight_map_.data(), inflight_map_.size(), page);
  inflight_base_ = inflight_map_.data() + slack;
  inflight_fd_ = std::move(fd);
  inflight_queues_ = req.num_queues;
  inflight_qsize_ = req.queue_size;
  return {};
}

std::byte* Session::inflight_region(uint16_t index, uint32_t num) const {
  if (inflight_base_ == nullptr || index >= inflight_queues_) return nullptr;
  if (num != inflight_qsize_) {
    LOG_WARN("vhost", "%s: ring %u has %u entries but the inflight region was made for %u; "
             "not tracking it", name_.c_str(), index, num, inflight_qsize_);
    return nullptr;
  }
  return inflight_base_ + index * virtq::inflight_queue_bytes(inflight_qsize_);
}

Status Session::set_mem_table(Message& m) {
  auto h = m.as<MemTableHeader>();
  std::vector<RegionSpec> specs;
  for (uint32_t i = 0; i < h.nregions; ++i) {
    MemRegion g;
    std::memcpy(&g, m.payload.data() + sizeof h + i * sizeof g, sizeof g);
    specs.push_back(RegionSpec{g.guest_phys, g.size, g.user_addr, g.mmap_offset,
                               std::move(m.fds[i])});
  }
  return with_rings_stopped([&] { return memory_.set_regions(std::move(specs)); });
}

Status Session::set_vring_addr(const VringAddr& a) {
  auto v = vring(a.index);
  if (!v.ok()) return v.error();
  if ((*v)->running) return Errc::kQueueRunning;
  if (a.flags & 1) return Errc::kMsgNotNegotiated;  // VHOST_VRING_F_LOG: logging not offered
  if (a.desc % 16 || a.avail % 2 || a.used % 4) return Errc::kQueueMisaligned;
  auto t = memory_.snapshot();
  if (!t->user_to_guest(a.desc).ok() || !t->user_to_guest(a.avail).ok() ||
      !t->user_to_guest(a.used).ok())
    return Errc::kVringAddrNotMapped;
  (*v)->addr = a;
  (*v)->addr_set = true;
  return {};
}

Status Session::set_vring_fd(Message& m, Request which) {
  auto payload = m.as<uint64_t>();
  auto v = vring(static_cast<uint32_t>(payload & kVringIndexMask));
  if (!v.ok()) return v.error();
  UniqueFd fd;
  if (!(payload & kVringNoFdFlag)) {
    fd = std::move(m.fds[0]);
    if (!is_eventfd(fd.get())) return Errc::kNotEventFd;
    SLUICE_TRY(make_nonblocking(fd.get()));
  }
  auto index = static_cast<uint16_t>(payload & kVringIndexMask);
  Vring& vr = **v;
  switch (which) {
    case Request::kSetVringKick:
      stop(index);  // a new kick fd restarts the ring from its saved base
      vr.kick = std::move(fd);
      vr.kick_set = true;
      return maybe_start(index);
    case Request::kSetVringCall: {
      // A running ring keeps running; only where its interrupts go changes
      // (QEMU swaps the call fd when the guest masks a vector). The old fd is
      // closed only after the device has stopped using it.
      UniqueFd old = std::move(vr.call);
      vr.call = std::move(fd);
      if (vr.running) device_.call_fd_changed(index, vr.call.get());
      return {};
    }
    default:
      vr.err = std::move(fd);
      return {};
  }
}

Status Session::maybe_start(uint16_t index) {
  Vring& v = *vrings_[index];
  if (v.running || !v.kick_set) return {};
  if (protocol_negotiated() && !v.enabled) return {};
  if (v.num == 0 || !v.addr_set) return Errc::kVringNotConfigured;
  auto table = memory_.snapshot();
  auto desc = table->user_to_guest(v.addr.desc);
  auto avail = table->user_to_guest(v.addr.avail);
  auto used = table->user_to_guest(v.addr.used);
  if (!desc.ok() || !avail.ok() || !used.ok()) return Errc::kVringAddrNotMapped;
  auto cfg = virtq::QueueConfig::from_features(features_, static_cast<uint16_t>(v.num),
                                               desc.value(), avail.value(), used.value());
  cfg.batching = device_.batching(index);
  SLUICE_TRY(v.queue.configure(cfg));
  SLUICE_TRY(v.queue.attach(table));
  v.queue.set_base(v.base);
  QueueBinding b{index, &v.queue, v.kick.get(), v.call.get(), inflight_region(index, v.num)};
  SLUICE_TRY(device_.queue_started(b));
  v.running = true;
  return {};
}

void Session::stop(uint16_t index) {
  Vring& v = *vrings_[index];
  if (!v.running) return;
  device_.queue_stopped(index);  // no worker touches the queue after this
  v.base = v.queue.stop();
  if (auto b = device_.stopped_base(index)) v.base = *b;  // the device ran the ring
  v.running = false;
}

template <class F>
Status Session::with_rings_stopped(F&& change) {
  std::vector<uint16_t> was_running;
  for (uint16_t i = 0; i < vrings_.size(); ++i)
    if (vrings_[i]->running) {
      was_running.push_back(i);
      stop(i);
    }
  Status s = change();
  for (uint16_t i : was_running) {
    Status r = maybe_start(i);
    if (!r.ok()) {
      LOG_WARN("vhost", "%s: ring %u cannot restart after a memory change: %.*s", name_.c_str(),
               i, static_cast<int>(r.error().name().size()), r.error().name().data());
      if (s.ok()) s = r;
    }
  }
  return s;
}

}  // namespace sluice::vhost
