// Shared by every libFuzzer target: libFuzzer calls this once before the
// first input.
#include "dataplane/base/log.h"

// Every refused input logs a warning (a broken queue, a bad message): at
// millions of inputs per run that made 340-370 MB of log per target per
// 45 s in CI (fuzz_chain, fuzz_vhost). Errors still print.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  sluice::set_log_level(sluice::LogLevel::kError);
  return 0;
}
