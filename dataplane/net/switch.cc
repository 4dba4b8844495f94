#include "dataplane/net/switch.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace sluice::net {

const char* drop_name(Drop d) {
  switch (d) {
    case Drop::kShortHeader: return "short_header";
    case Drop::kRunt: return "runt";
    case Drop::kOversize: return "oversize";
    case Drop::kBadCsum: return "bad_csum";
    case Drop::kNoRxBuffer: return "no_rx_buffer";
    case Drop::kRxTooSmall: return "rx_buffer_too_small";
    case Drop::kRxBadChain: return "rx_bad_chain";
    case Drop::kRxNotReady: return "rx_not_ready";
    case Drop::kFiltered: return "filtered";
    case Drop::kUplinkFull: return "uplink_full";
    case Drop::kGuestFault: return "guest_memory_fault";
    case Drop::kSrcMacLocked: return "src_mac_locked";
    case Drop::kSrcMacOwned: return "src_mac_owned";
    case Drop::kFloodLimit: return "flood_limit";
    case Drop::kCount: break;
  }
  return "?";
}

namespace {
uint64_t mac_at(const uint8_t* b) noexcept {
  uint64_t m = 0;
  for (int i = 0; i < 6; ++i) m = m << 8 | b[i];
  return m;
}
}  // namespace

uint64_t Packet::dst() const noexcept { return mac_at(eth); }
uint64_t Packet::src() const noexcept { return mac_at(eth + 6); }

uint32_t Packet::copy_out(uint32_t from, void* dstv, uint32_t n, bool finish_csum) const noexcept {
  if (from >= len) return 0;
  n = std::min(n, len - from);
  auto* d = static_cast<uint8_t*>(dstv);
  uint32_t done = 0;
  if (from < kEthHdrLen) {
    uint32_t k = std::min(n, kEthHdrLen - from);
    std::memcpy(d, eth + from, k);
    done = k;
  }
  if (done < n) {
    // Frame byte `pos` is at iov offset `offset + pos`.
    uint64_t skip = uint64_t{offset} + from + done;
    uint32_t i = 0;
    while (i < niov && skip >= iov[i].iov_len) skip -= iov[i++].iov_len;
    while (done < n && i < niov) {
      size_t k = std::min<size_t>(iov[i].iov_len - skip, n - done);
      // memmove: source and destination may both be one guest's memory (a
      // receive buffer overlapping the frame sent).
      std::memmove(d + done, static_cast<const uint8_t*>(iov[i].iov_base) + skip, k);
      done += static_cast<uint32_t>(k);
      skip = 0;
      ++i;
    }
  }
  if (needs_csum && finish_csum) {
    // The finished checksum replaces the partial one the sender left.
    uint32_t at = uint32_t{csum_start} + csum_offset;
    const auto* c = reinterpret_cast<const uint8_t*>(&csum);
    for (uint32_t b = 0; b < 2; ++b)
      if (at + b >= from && at + b < from + done) d[at + b - from] = c[b];
  }
  return done;
}

std::string format_mac(uint64_t mac) {
  char b[18];
  std::snprintf(b, sizeof b, "%02x:%02x:%02x:%02x:%02x:%02x", unsigned(mac >> 40 & 0xff),
                unsigned(mac >> 32 & 0xff), unsigned(mac >> 24 & 0xff), unsigned(mac >> 16 & 0xff),
                unsigned(mac >> 8 & 0xff), unsigned(mac & 0xff));
  return b;
}

bool parse_mac(const std::string& s, uint64_t& out) {
  if (s.size() != 17) return false;
  uint64_t m = 0;
  for (int i = 0; i < 6; ++i) {
    if (i > 0 && s[static_cast<size_t>(i * 3 - 1)] != ':') return false;
    unsigned v = 0;
    for (int j = 0; j < 2; ++j) {
      char c = s[static_cast<size_t>(i * 3 + j)];
      unsigned x;
      if (c >= '0' && c <= '9') x = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') x = static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') x = static_cast<unsigned>(c - 'A' + 10);
      else return false;
      v = v << 4 | x;
    }
    m = m << 8 | v;
  }
  out = m;
  return true;
}

Switch::Switch(std::string name, Worker& worker, uint64_t aging_s)
    : name_(std::move(name)), worker_(worker), aging_ns_(aging_s * 1000000000ull), macs_(kMacBuckets) {}

uint64_t Switch::now_ns() noexcept {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

Status Switch::add_port(SwitchPort& p) {
  for (uint16_t s = 1; s <= kMaxPorts; ++s) {
    if (ports_[s].load(std::memory_order_relaxed) != nullptr) continue;
    // A new generation: MAC entries learned on the slot's previous owner
    // no longer match (and are not counted: the count starts again).
    port_gen_[s].store(++gen_[s], std::memory_order_relaxed);
    nmacs_[s].store(0, std::memory_order_relaxed);
    lock_mac_[s].store(p.sec_.locked_mac, std::memory_order_relaxed);
    p.flood_tokens_ = p.sec_.flood_burst() * 1000000000ull;
    p.flood_at_ = 0;
    p.slot_ = s;
    ports_[s].store(&p, std::memory_order_release);
    if (s > top_.load(std::memory_order_relaxed)) top_.store(s, std::memory_order_release);
    return {};
  }
  return Errc::kInvalidArgument;
}

void Switch::remove_port(SwitchPort& p) {
  uint16_t s = p.slot_;
  if (s == 0 || ports_[s].load(std::memory_order_relaxed) != &p) return;
  ports_[s].store(nullptr, std::memory_order_release);
  port_gen_[s].store(++gen_[s], std::memory_order_relaxed);
  lock_mac_[s].store(0, std::memory_order_relaxed);
  // The worker finishes the burst it is in; later bursts cannot see p.
  worker_.sync();
  p.slot_ = 0;
}

std::vector<SwitchPort*> Switch::ports() const {
  std::vector<SwitchPort*> v;
  for (uint16_t s = 1; s <= top_.load(std::memory_order_acquire); ++s)
    if (SwitchPort* p = ports_[s].load(std::memory_order_acquire)) v.push_back(p);
  return v;
}

uint32_t Switch::hash(uint64_t mac) noexcept {
  return static_cast<uint32_t>((mac * 0x9e3779b97f4a7c15ull) >> 40);
}

namespace {
constexpr uint64_t kMacMask = 0xffffffffffffull;
uint16_t key_slot(uint64_t k) noexcept { return static_cast<uint16_t>(k >> 48 & 0xff); }
void bump(std::atomic<uint64_t>& c) noexcept {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}
}  // namespace

bool Switch::live(uint64_t k) const noexcept {
  uint16_t slot = key_slot(k);
  return k != 0 && port_gen_[slot].load(std::memory_order_relaxed) == static_cast<uint8_t>(k >> 56) &&
         ports_[slot].load(std::memory_order_relaxed) != nullptr;
}

void Switch::release(uint64_t k) noexcept {
  // Only a live entry was counted (a slot's count restarts when it is reused).
  if (!live(k)) return;
  std::atomic<uint32_t>& n = nmacs_[key_slot(k)];
  uint32_t v = n.load(std::memory_order_relaxed);
  if (v != 0) n.store(v - 1, std::memory_order_relaxed);
}

uint16_t Switch::locked_owner(uint64_t mac) const noexcept {
  uint16_t top = top_.load(std::memory_order_acquire);
  for (uint16_t s = 1; s <= top; ++s)
    if (lock_mac_[s].load(std::memory_order_relaxed) == mac && ports_[s].load(std::memory_order_relaxed) != nullptr)
      return s;
  return 0;
}

Switch::Learn Switch::learn(uint64_t mac, uint16_t slot, uint64_t now) noexcept {
  const uint64_t key = mac | uint64_t{slot} << 48 |
                       uint64_t{port_gen_[slot].load(std::memory_order_relaxed)} << 56;
  const uint32_t h = hash(mac);
  for (unsigned i = 0; i < kMacProbe; ++i) {
    Entry& e = macs_[(h + i) & (kMacBuckets - 1)];
    uint64_t k = e.key.load(std::memory_order_relaxed);
    if (k == key) {
      // Known here. Refreshing the timestamp at most every ~100 ms keeps
      // the line quiet.
      if (now - e.seen.load(std::memory_order_relaxed) > 100000000ull) e.seen.store(now, std::memory_order_relaxed);
      return Learn::kOk;
    }
    if (k != 0 && (k & kMacMask) == mac) return learn_move(e, key, now);
  }
  return learn_new(key, h, now);
}

Switch::Learn Switch::learn_move(Entry& e, uint64_t key, uint64_t now) noexcept {
  // Seen on another port (or on its port's previous owner): a move, unless
  // the MAC is a locked port's, or the sender has learned all it may.
  const uint64_t mac = key & kMacMask;
  const uint16_t slot = key_slot(key);
  if (uint16_t o = locked_owner(mac); o != 0 && o != slot) return Learn::kOwned;
  SwitchPort* p = ports_[slot].load(std::memory_order_relaxed);
  if (nmacs_[slot].load(std::memory_order_relaxed) >= p->sec_.max_macs) return Learn::kPortLimit;
  release(e.key.load(std::memory_order_relaxed));
  e.key.store(key, std::memory_order_relaxed);
  e.seen.store(now, std::memory_order_relaxed);
  nmacs_[slot].store(nmacs_[slot].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  bump(learned_);
  return Learn::kOk;
}

Switch::Learn Switch::learn_new(uint64_t key, uint32_t h, uint64_t now) noexcept {
  const uint64_t mac = key & kMacMask;
  const uint16_t slot = key_slot(key);
  if (uint16_t o = locked_owner(mac); o != 0 && o != slot) return Learn::kOwned;
  SwitchPort* p = ports_[slot].load(std::memory_order_relaxed);
  if (nmacs_[slot].load(std::memory_order_relaxed) >= p->sec_.max_macs) return Learn::kPortLimit;
  // Where it may go in its probe window: an empty, stale or aged entry
  // first, else the oldest of the port's own; never another port's fresh one.
  Entry* victim = nullptr;
  uint64_t oldest = UINT64_MAX;
  for (unsigned i = 0; i < kMacProbe; ++i) {
    Entry& e = macs_[(h + i) & (kMacBuckets - 1)];
    uint64_t k = e.key.load(std::memory_order_relaxed);
    uint64_t seen = e.seen.load(std::memory_order_relaxed);
    if (!live(k) || now - seen > aging_ns_) {
      victim = &e;
      break;
    }
    if (key_slot(k) == slot && seen < oldest) {
      oldest = seen;
      victim = &e;
    }
  }
  if (victim == nullptr) return Learn::kTableFull;
  release(victim->key.load(std::memory_order_relaxed));
  victim->key.store(key, std::memory_order_relaxed);
  victim->seen.store(now, std::memory_order_relaxed);
  nmacs_[slot].store(nmacs_[slot].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  bump(learned_);
  return Learn::kOk;
}

SwitchPort* Switch::lookup(uint64_t mac, uint64_t now) noexcept {
  uint32_t h = hash(mac);
  for (unsigned i = 0; i < kMacProbe; ++i) {
    const Entry& e = macs_[(h + i) & (kMacBuckets - 1)];
    uint64_t k = e.key.load(std::memory_order_relaxed);
    if (k == 0 || (k & kMacMask) != mac) continue;
    if (now - e.seen.load(std::memory_order_relaxed) > aging_ns_) break;  // aged out
    uint16_t slot = key_slot(k);
    if (port_gen_[slot].load(std::memory_order_relaxed) != static_cast<uint8_t>(k >> 56)) break;
    return ports_[slot].load(std::memory_order_acquire);
  }
  return lookup_locked(mac, now);
}

SwitchPort* Switch::lookup_locked(uint64_t mac, uint64_t now) noexcept {
  // Not learned: a locked port's MAC is known without it (a port that has
  // not sent yet, a sink); learned on its behalf so the next frame hits.
  if (uint16_t o = locked_owner(mac)) {
    (void)learn(mac, o, now);  // its own MAC: within any max_macs, or forwarded unlearned
    return ports_[o].load(std::memory_order_acquire);
  }
  return nullptr;
}

bool Switch::flood_ok(SwitchPort& from, uint64_t now) noexcept {
  const uint64_t rate = from.sec_.flood_rate;
  constexpr uint64_t kUnit = 1000000000ull;  // tokens per frame
  const uint64_t cap = from.sec_.flood_burst() * kUnit;
  if (from.flood_at_ != 0 && now > from.flood_at_) {
    uint64_t dt = std::min<uint64_t>(now - from.flood_at_, kUnit);  // a second refills any bucket; rate < 2^32: no overflow
    from.flood_tokens_ = std::min(cap, from.flood_tokens_ + dt * rate);
  }
  from.flood_at_ = now;
  if (from.flood_tokens_ < kUnit) return false;
  from.flood_tokens_ -= kUnit;
  return true;
}

void Switch::sweep(uint64_t now) noexcept {
  sweep_at_ = now;
  for (Entry& e : macs_) {
    uint64_t k = e.key.load(std::memory_order_relaxed);
    if (k == 0) continue;
    if (live(k) && now - e.seen.load(std::memory_order_relaxed) <= aging_ns_) continue;
    release(k);
    e.key.store(0, std::memory_order_relaxed);
  }
}

void Switch::forward(SwitchPort& from, const Packet& p, uint16_t qp, uint64_t now) noexcept {
  uint64_t src = p.src(), dst = p.dst();
  const uint64_t lock = from.sec_.locked_mac;
  if (lock != 0 && src != lock) [[unlikely]] {
    from.stats().drop(Drop::kSrcMacLocked);
    return;
  }
  if (now - sweep_at_ > kSweepNs) [[unlikely]]
    sweep(now);
  if (!is_multicast(src)) {
    switch (learn(src, from.slot_, now)) {
      case Learn::kOk: break;
      case Learn::kOwned:
        from.stats().drop(Drop::kSrcMacOwned);
        return;
      case Learn::kPortLimit: bump(from.stats().learn_port_limit); break;
      case Learn::kTableFull: bump(from.stats().learn_table_full); break;
    }
  }
  if (!is_multicast(dst)) {
    if (SwitchPort* to = lookup(dst, now)) {
      // A frame for a MAC learned on its own port stays there (as any
      // learning bridge does); it is not a drop of anyone's.
      if (to != &from) to->deliver(p, qp);
      return;
    }
  }
  if (from.sec_.flood_rate != 0 && !flood_ok(from, now)) {
    from.stats().drop(Drop::kFloodLimit);
    return;
  }
  bump(flooded_);
  uint16_t top = top_.load(std::memory_order_acquire);
  for (uint16_t s = 1; s <= top; ++s) {
    SwitchPort* to = ports_[s].load(std::memory_order_acquire);
    if (to == nullptr || to == &from) continue;
    if (!to->accepts(dst)) {
      to->stats().drop(Drop::kFiltered);
      continue;
    }
    to->deliver(p, qp);
  }
}

std::vector<MacEntry> Switch::mac_table() const {
  std::vector<MacEntry> v;
  uint64_t now = now_ns();
  for (const Entry& e : macs_) {
    uint64_t k = e.key.load(std::memory_order_relaxed);
    if (k == 0) continue;
    uint64_t seen = e.seen.load(std::memory_order_relaxed);
    if (now > seen && now - seen > aging_ns_) continue;
    if (!live(k)) continue;
    SwitchPort* p = ports_[key_slot(k)].load(std::memory_order_acquire);
    if (p == nullptr) continue;
    v.push_back(MacEntry{k & kMacMask, p->name(), now > seen ? double(now - seen) / 1e9 : 0});
  }
  std::sort(v.begin(), v.end(), [](const MacEntry& a, const MacEntry& b) { return a.mac < b.mac; });
  return v;
}

}  // namespace sluice::net
