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
