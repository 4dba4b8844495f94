// Guest memory that faults: surviving SIGBUS in memory a peer controls.
//
// Guest memory (and a front-end's inflight region) is a file the front-end
// owns. Any access to it may raise SIGBUS: the file was shrunk after it was
// mapped, a block device is smaller than the region, a huge page could not be
// allocated, a page is hardware-poisoned (BUS_MCEERR_AR), a guest_memfd page
// is private. Without care, one front-end kills the whole daemon.
//
// The mechanism: the owner of such a mapping registers its range (Guard).
// A process-wide SIGBUS handler checks the faulting address against the
// registered ranges. Inside one, it maps a private zero page over the
// faulting page (a huge page for hugetlbfs), records the fault for the
// faulting thread, and returns: the access completes on the zero page and
// nothing ends. Outside every range the signal is what it always was (the
// default action: the process ends with a core).
//
// Nothing is armed per access. Whoever touched guest memory asks whether the
// thread has faults pending (a thread-local load: per request only where a
// request's guest reads happen; a worker asks after each call into a queue)
// and takes them (take()) to decide: a fault on a ring
// breaks that queue, one in a request's buffers fails that request, and the
// page is remembered as poisoned (PoisonList) so that later requests
// touching it fail at once, without another signal.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace sluice::fault {

// Why an access faulted, from the signal's si_code.
enum class Cause : uint8_t {
  kNoBacking,  // BUS_ADRERR: no page behind the address (file shrunk, device too small)
  kHwPoison,   // BUS_MCEERR_AR / BUS_MCEERR_AO: an uncorrected memory error
  kOther,      // BUS_OBJERR and anything else (e.g. a private guest_memfd page)
};
std::string_view cause_name(Cause c) noexcept;

// One survived fault as the faulting thread saw it.
struct Fault {
  uintptr_t addr = 0;       // the faulting address
  uintptr_t page = 0;       // start of the page replaced (huge page on hugetlbfs)
  uint64_t page_size = 0;
  Cause cause = Cause::kOther;
};

// Per-thread record written by the handler (async-signal-safe: plain stores
// to static TLS). Read through count() and recent().
struct ThreadFaults {
  static constexpr unsigned kRecent = 8;
  uint64_t count = 0;    // faults survived by this thread
  uint64_t handled = 0;  // of those, the ones taken by take()
  Fault recent[kRecent];  // ring, newest at (count - 1) % kRecent
};
// constinit: no lazy initialisation behind the access (the handler uses it);
// initial-exec: a fixed offset from the thread pointer, no __tls_get_addr.
extern thread_local constinit ThreadFaults t_faults [[gnu::tls_model("initial-exec")]];

// Faults this thread has survived.
inline uint64_t count() noexcept {
  const volatile uint64_t* c = &t_faults.count;
  return *c;
}
// Whether this thread survived faults nobody has taken yet: the code that
// touched guest memory since the last take() owns them.
inline bool pending() noexcept { return count() != t_faults.handled; }
// Takes this thread's pending faults, oldest first, at most
// ThreadFaults::kRecent (older ones are gone), and marks them handled.
// Returns how many were written to out.
size_t take(std::span<Fault> out) noexcept;

// Installs the SIGBUS handler (once per process; any thread; idempotent).
void install();
// Faults survived by the whole process.
uint64_t total() noexcept;

// A registered range: faults inside it are survived. Move-only; unregisters
// when destroyed (before the range is unmapped).
class Guard {
 public:
  Guard() = default;
  // page_size: what the handler replaces (the mapping's page size).
  Guard(const void* base, size_t len, size_t page_size);
  Guard(Guard&& o) noexcept : slot_(o.slot_) { o.slot_ = -1; }
  Guard& operator=(Guard&& o) noexcept;
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  ~Guard() { reset(); }
  void reset() noexcept;
  bool active() const noexcept { return slot_ >= 0; }

 private:
  int slot_ = -1;
};

// Pages of one guest memory that faulted: a device never uses them again.
// Appended by whichever thread saw the fault (lock-free), read by every
// thread that serves the memory. Bounded: a guest with more poisoned pages
// than this has every further request refused (full()).
class PoisonList {
 public:
  static constexpr uint32_t kMax = 64;
  struct Page {
    uint64_t gpa = 0;     // guest physical address of the page start
    uintptr_t host = 0;   // host address of the page start
    uint64_t size = 0;
    Cause cause = Cause::kOther;
  };
  // Records a page (idempotent); false when it was already known.
  bool add(const Page& p) noexcept;
  uint32_t size() const noexcept { return std::min(n_.load(std::memory_order_acquire), kMax); }
  bool empty() const noexcept { return n_.load(std::memory_order_relaxed) == 0; }
  bool full() const noexcept { return n_.load(std::memory_order_relaxed) > kMax; }
  Page at(uint32_t i) const noexcept;
  // Whether [p, p+len) touches a recorded page (or the list overflowed).
  bool touches(const void* p, size_t len) const noexcept;

 private:
  std::atomic<uint32_t> n_{0};  // pages claimed; > kMax once one did not fit
  struct Slot {
    std::atomic<uint64_t> gpa{0}, host{0}, size{0};
    std::atomic<uint8_t> cause{0};
    std::atomic<bool> ready{false};
  };
  Slot slots_[kMax];
};

}  // namespace sluice::fault
