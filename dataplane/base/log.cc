#include "dataplane/base/log.h"

#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <ctime>

namespace sluice {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* level_tag(LogLevel l) {
  switch (l) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "?";
}
}  // namespace

void set_log_level(LogLevel level) noexcept {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}
LogLevel log_level() noexcept {
  return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed));
}

void log_message(LogLevel level, const char* component, const char* fmt, ...) noexcept {
  char buf[1024];
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &t);
  int n = std::snprintf(buf, sizeof buf, "%s.%03ldZ %s %s: ", when, ts.tv_nsec / 1000000,
                        level_tag(level), component);
  if (n < 0) return;
  size_t used = static_cast<size_t>(n) < sizeof buf ? static_cast<size_t>(n) : sizeof buf - 1;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + used, sizeof buf - used, fmt, ap);
  va_end(ap);
  if (m > 0) used += static_cast<size_t>(m) < sizeof buf - used ? static_cast<size_t>(m) : sizeof buf - used - 1;
  if (used >= sizeof buf - 1) used = sizeof buf - 2;
  buf[used++] = '\n';
  ssize_t w = ::write(STDERR_FILENO, buf, used);
  (void)w;
}

bool LogLimit::allow(unsigned long long* suppressed) noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const unsigned long long now = static_cast<unsigned long long>(ts.tv_sec) * 1000 +
                                 static_cast<unsigned long long>(ts.tv_nsec) / 1000000;
  if (last_ms_ == 0) last_ms_ = now;
  if (now - last_ms_ >= interval_ms_) {  // refill one token per interval
    const unsigned long long add = (now - last_ms_) / interval_ms_;
    tokens_ = static_cast<unsigned>(std::min<unsigned long long>(burst_, tokens_ + add));
    last_ms_ = now;
  }
  if (tokens_ == 0) {
    ++dropped_;
    return false;
  }
  --tokens_;
  *suppressed = dropped_;
  dropped_ = 0;
  return true;
}

}  // namespace sluice
