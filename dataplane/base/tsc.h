// A cheap monotonic tick for cost accounting: the time-stamp counter on x86
// (constant rate on every x86 this runs on; callers convert ticks to ns
// against the steady clock), the steady clock's count elsewhere.
#pragma once

#include <chrono>
#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace sluice {

inline uint64_t read_tsc() noexcept {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

}  // namespace sluice
