#include "dataplane/memory/guest_fault.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>

namespace sluice::fault {

thread_local constinit ThreadFaults t_faults [[gnu::tls_model("initial-exec")]];

namespace {

// Registered ranges. A slot is live when end != 0; the handler reads end
// before start, and registration writes start before end (unregistration
// clears end first), so the handler never sees half a range.
struct Range {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uint64_t> page{0};
};
constexpr int kMaxRanges = 8192;
Range g_ranges[kMaxRanges];
std::atomic<int> g_high{0};  // slots [0, g_high) may be live
std::mutex g_reg_mu;         // registration only (never taken by the handler)
std::atomic<uint64_t> g_total{0};
std::once_flag g_install_once;

Cause cause_of(int code) {
  switch (code) {
    case BUS_ADRERR:
      return Cause::kNoBacking;
#ifdef BUS_MCEERR_AR
    case BUS_MCEERR_AR:
    case BUS_MCEERR_AO:
      return Cause::kHwPoison;
#endif
    default:
      return Cause::kOther;
  }
}

void write_str(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  (void)!::write(2, s, n);
}

// Async-signal-safe throughout: atomics, mmap, plain TLS stores.
void on_sigbus(int, siginfo_t* si, void*) {
  const int saved_errno = errno;
  const auto a = reinterpret_cast<uintptr_t>(si->si_addr);
  uint64_t page = 0;
  if (si->si_code > 0) {  // raised by the kernel for an access, not by kill()
    const int hw = g_high.load(std::memory_order_acquire);
    for (int i = 0; i < hw; ++i) {
      uintptr_t e = g_ranges[i].end.load(std::memory_order_acquire);
      if (e == 0 || a >= e) continue;
      if (a < g_ranges[i].start.load(std::memory_order_acquire)) continue;
      page = g_ranges[i].page.load(std::memory_order_relaxed);
      break;
    }
  }
  if (page != 0) {
    const uintptr_t p = a & ~(page - 1);
    void* m = ::mmap(reinterpret_cast<void*>(p), page, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED) {
      ThreadFaults& t = t_faults;
      t.recent[t.count % ThreadFaults::kRecent] = Fault{a, p, page, cause_of(si->si_code)};
      std::atomic_signal_fence(std::memory_order_release);
      volatile uint64_t* c = &t.count;
      *c = t.count + 1;
      g_total.fetch_add(1, std::memory_order_relaxed);
      errno = saved_errno;
      return;  // the access is retried, on the zero page
    }
    write_str("sluice: cannot replace a faulting guest page (mmap failed)\n");
  }
  // Not guest memory: the signal means what it always meant. Back to the
  // default action; the faulting access runs again and ends the process.
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
  if (si->si_code <= 0) ::raise(SIGBUS);  // sent by a process: nothing to retry
  errno = saved_errno;
}

}  // namespace

std::string_view cause_name(Cause c) noexcept {
  switch (c) {
    case Cause::kNoBacking:
      return "no-backing-page";
    case Cause::kHwPoison:
      return "hardware-poison";
    case Cause::kOther:
      break;
  }
  return "bus-error";
}

void install() {
  std::call_once(g_install_once, [] {
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

uint64_t total() noexcept { return g_total.load(std::memory_order_relaxed); }

size_t take(std::span<Fault> out) noexcept {
  const uint64_t now = count();
  std::atomic_signal_fence(std::memory_order_acquire);
  const uint64_t oldest = now > ThreadFaults::kRecent ? now - ThreadFaults::kRecent : 0;
  size_t n = 0;
  for (uint64_t i = std::max(t_faults.handled, oldest); i < now && n < out.size(); ++i)
    out[n++] = t_faults.recent[i % ThreadFaults::kRecent];
  t_faults.handled = now;
  return n;
}

Guard::Guard(const void* base, size_t len, size_t page_size) {
  if (base == nullptr || len == 0 || page_size == 0) return;
  install();
  std::lock_guard lk(g_reg_mu);
  const int hw = g_high.load(std::memory_order_relaxed);
  int i = 0;
  while (i < hw && g_ranges[i].end.load(std::memory_order_relaxed) != 0) ++i;
  if (i == kMaxRanges) return;  // not guarded: a fault there ends the process as before
  Range& r = g_ranges[i];
  r.page.store(page_size, std::memory_order_relaxed);
  r.start.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
  r.end.store(reinterpret_cast<uintptr_t>(base) + len, std::memory_order_release);
  if (i == hw) g_high.store(hw + 1, std::memory_order_release);
  slot_ = i;
}

Guard& Guard::operator=(Guard&& o) noexcept {
  if (this != &o) {
    reset();
    slot_ = o.slot_;
    o.slot_ = -1;
  }
  return *this;
}

void Guard::reset() noexcept {
  if (slot_ < 0) return;
  std::lock_guard lk(g_reg_mu);
  g_ranges[slot_].end.store(0, std::memory_order_release);
  g_ranges[slot_].start.store(0, std::memory_order_release);
  slot_ = -1;
}

bool PoisonList::add(const Page& p) noexcept {
  const uint32_t n = size();
  for (uint32_t i = 0; i < n; ++i)
    if (slots_[i].ready.load(std::memory_order_acquire) &&
        slots_[i].host.load(std::memory_order_relaxed) == p.host)
      return false;
  const uint32_t i = n_.fetch_add(1, std::memory_order_acq_rel);
  if (i >= kMax) {
    n_.store(kMax + 1, std::memory_order_release);  // full(): everything is refused from now on
    return true;
  }
  Slot& s = slots_[i];
  s.gpa.store(p.gpa, std::memory_order_relaxed);
  s.host.store(p.host, std::memory_order_relaxed);
  s.size.store(p.size, std::memory_order_relaxed);
  s.cause.store(static_cast<uint8_t>(p.cause), std::memory_order_relaxed);
  s.ready.store(true, std::memory_order_release);
  return true;
}

PoisonList::Page PoisonList::at(uint32_t i) const noexcept {
  if (i >= kMax) return {};
  const Slot& s = slots_[i];
  if (!s.ready.load(std::memory_order_acquire)) return {};
  return Page{s.gpa.load(std::memory_order_relaxed), s.host.load(std::memory_order_relaxed),
              s.size.load(std::memory_order_relaxed),
              static_cast<Cause>(s.cause.load(std::memory_order_relaxed))};
}

bool PoisonList::touches(const void* p, size_t len) const noexcept {
  if (full()) return true;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const uint32_t n = size();
  for (uint32_t i = 0; i < n; ++i) {
    if (!slots_[i].ready.load(std::memory_order_acquire)) continue;
    uintptr_t h = slots_[i].host.load(std::memory_order_relaxed);
    uint64_t sz = slots_[i].size.load(std::memory_order_relaxed);
    if (a < h + sz && h < a + len) return true;
  }
  return false;
}

}  // namespace sluice::fault
