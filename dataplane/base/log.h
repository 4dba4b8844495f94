// Minimal levelled logging to stderr. printf-style so that it is usable from
// any layer without pulling in iostreams; one write(2) per line so concurrent
// workers do not interleave within a line.
#pragma once

#include <atomic>

namespace sluice {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
void log_message(LogLevel level, const char* component, const char* fmt, ...) noexcept
    __attribute__((format(printf, 3, 4)));

// Lines about one peer's misbehaviour, bounded: at most `burst` lines, then
// one per `interval_ms` (each saying how many were left out since). A peer
// that sends a million bad messages costs the log a few lines a second. One
// per session (or per export, or per API); single-threaded.
class LogLimit {
 public:
  explicit LogLimit(unsigned burst = 20, unsigned interval_ms = 1000) noexcept
      : burst_(burst), tokens_(burst), interval_ms_(interval_ms) {}
  // Whether to log this line; *suppressed gets the lines left out before it.
  bool allow(unsigned long long* suppressed) noexcept;

 private:
  unsigned burst_, tokens_, interval_ms_;
  unsigned long long last_ms_ = 0, dropped_ = 0;
};

}  // namespace sluice

#define SLUICE_LOG(level, component, ...)                                      \
  do {                                                                          \
    if (static_cast<int>(level) <= static_cast<int>(::sluice::log_level()))     \
      ::sluice::log_message(level, component, __VA_ARGS__);                     \
  } while (0)
#define LOG_ERROR(c, ...) SLUICE_LOG(::sluice::LogLevel::kError, c, __VA_ARGS__)
#define LOG_WARN(c, ...) SLUICE_LOG(::sluice::LogLevel::kWarn, c, __VA_ARGS__)
#define LOG_INFO(c, ...) SLUICE_LOG(::sluice::LogLevel::kInfo, c, __VA_ARGS__)
#define LOG_DEBUG(c, ...) SLUICE_LOG(::sluice::LogLevel::kDebug, c, __VA_ARGS__)
// A line bounded by a LogLimit; the first one after a gap says how many
// similar lines were left out. At least one argument after the format.
#define LOG_LIMITED(limit, level, c, fmt, ...)                                                        \
  do {                                                                                                \
    unsigned long long sluice_left_out_ = 0;                                                          \
    if ((limit).allow(&sluice_left_out_)) {                                                           \
      if (sluice_left_out_ != 0)                                                                      \
        SLUICE_LOG(level, c, fmt " (%llu similar lines not logged)", __VA_ARGS__, sluice_left_out_);  \
      else                                                                                            \
        SLUICE_LOG(level, c, fmt, __VA_ARGS__);                                                       \
    }                                                                                                 \
  } while (0)
