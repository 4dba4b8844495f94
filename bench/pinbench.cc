// sluice-pinbench: how long pinning memory takes, by backing and method.
//
//   sluice-pinbench --size 1G --backing anon4k,thp,huge2m[,huge1g]
//                   --method iouring,mlock[,vfio:GROUP] --reps 5
//                   [--json FILE] [--csv FILE] [--iova BASE]
//
// Backings: 4 KiB anonymous pages (THP off for the range), THP (madvise),
// hugetlbfs 2 MiB and 1 GiB (MAP_HUGETLB). Memory is populated before any
// timing, so the figures are pinning, not page faults.
// Methods: mlock/munlock; io_uring buffer registration (pins without VFIO);
// VFIO type1 MAP_DMA/UNMAP_DMA on a container holding GROUP, with the
// planner's policies: one call per 4 KiB page, one per folio, the planned
// minimum, and one raw MAP_DMA of the whole range (the reference).
// A backing or method the machine cannot offer is reported as skipped with
// the reason, never as a failure.
#include <fcntl.h>
#include <liburing.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "vfio/container.h"
#include "vfio/dma_mapper.h"
#include "vfio/dma_plan.h"

namespace {

using namespace sluice;
using Clock = std::chrono::steady_clock;

constexpr uint64_t k4K = 4096, k2M = 2ull << 20, k1G = 1ull << 30;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "sluice-pinbench: %s\n"
               "usage: sluice-pinbench [--size N[K|M|G]] [--backing anon4k,thp,huge2m,huge1g]\n"
               "                       [--method iouring,mlock,vfio:GROUP] [--reps N]\n"
               "                       [--json FILE] [--csv FILE] [--iova BASE]\n",
               why);
  std::exit(2);
}

std::optional<uint64_t> parse_size(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  uint64_t v = std::strtoull(s.c_str(), &end, 0);
  uint64_t mul = 1;
  std::string suffix(end);
  if (suffix == "K" || suffix == "k") mul = 1024;
  else if (suffix == "M" || suffix == "m") mul = 1ull << 20;
  else if (suffix == "G" || suffix == "g") mul = 1ull << 30;
  else if (!suffix.empty()) return std::nullopt;
  if (v == 0 || v > (1ull << 40) / mul) return std::nullopt;
  return v * mul;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Memory of one backing, populated.
struct Memory {
  void* base = nullptr;  // what to munmap
  size_t maplen = 0;
  uint8_t* p = nullptr;  // aligned start
  uint64_t size = 0;
  uint64_t page = k4K;  // backing page size (folio size for the planner)
  Memory() = default;
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;
  ~Memory() {
    if (base != nullptr) ::munmap(base, maplen);
  }
};

std::string read_file(const char* path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Kilobytes of AnonHugePages in this process (THP check).
uint64_t anon_huge_kb() {
  std::string s = read_file("/proc/self/smaps_rollup");
  auto at = s.find("AnonHugePages:");
  return at == std::string::npos ? 0 : std::strtoull(s.c_str() + at + 14, nullptr, 10);
}

// Returns an empty string on success, else why the backing is unavailable.
std::string allocate(const std::string& backing, uint64_t size, Memory& m) {
  m.size = size;
  if (backing == "anon4k" || backing == "thp") {
    bool thp = backing == "thp";
    if (thp) {
      std::string mode = read_file("/sys/kernel/mm/transparent_hugepage/enabled");
      if (mode.find("[never]") != std::string::npos || mode.empty())
        return "transparent huge pages are disabled";
    }
    m.maplen = size + (thp ? k2M : 0);
    m.base = ::mmap(nullptr, m.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m.base == MAP_FAILED) {
      m.base = nullptr;
      return std::string("mmap: ") + std::strerror(errno);
    }
    auto a = reinterpret_cast<uintptr_t>(m.base);
    m.p = reinterpret_cast<uint8_t*>(thp ? (a + k2M - 1) & ~(k2M - 1) : a);
    uint64_t before = anon_huge_kb();
    if (::madvise(m.p, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0)
      return std::string("madvise: ") + std::strerror(errno);
    for (uint64_t off = 0; off < size; off += k4K) m.p[off] = 1;  // populate
    if (thp) {
      uint64_t got = (anon_huge_kb() - before) * 1024;
      if (got < size / 2) return "the kernel gave too few transparent huge pages";
      m.page = k2M;
    }
    return {};
  }
  if (backing == "huge2m" || backing == "huge1g") {
    bool one_g = backing == "huge1g";
    m.page = one_g ? k1G : k2M;
    if (size % m.page != 0) return "size is not a multiple of the huge page size";
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE |
                (one_g ? MAP_HUGE_1GB : MAP_HUGE_2MB);
    m.maplen = size;
    m.base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (m.base == MAP_FAILED) {
      m.base = nullptr;
      return std::string("not enough ") + (one_g ? "1 GiB" : "2 MiB") +
             " huge pages (see /sys/kernel/mm/hugepages/*/nr_hugepages): " + std::strerror(errno);
    }
    m.p = static_cast<uint8_t*>(m.base);
    return {};
  }
  return "unknown backing";
}

struct Sample {
  double pin_ms, unpin_ms;
};

struct Row {
  std::string backing, method, plan;
  uint64_t calls = 0;
  std::vector<Sample> samples;
  std::string skipped;  // reason, when skipped
};

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// One measurement: pin() then unpin(), each timed; either may fail.
using Step = std::function<std::string()>;  // empty on success, else the error

// Progress goes to a terminal only (long runs: 8 GiB per 4 KiB page).
const bool kProgress = ::isatty(STDERR_FILENO) == 1;

// One sample; false (and the row marked skipped) when a step failed.
bool measure_once(Row& row, const Step& pin, const Step& unpin) {
  auto t0 = Clock::now();
  std::string e = pin();
  double pin_ms = ms_since(t0);
  if (!e.empty()) {
    row.skipped = e;
    row.samples.clear();
    return false;
  }
  t0 = Clock::now();
  e = unpin();
  double unpin_ms = ms_since(t0);
  if (!e.empty()) {
    row.skipped = "unpin: " + e;
    row.samples.clear();
    return false;
  }
  row.samples.push_back({pin_ms, unpin_ms});
  return true;
}

void progress(const Row& row, int rep, int reps) {
  if (kProgress)
    std::fprintf(stderr, "\r  %-7s %-8s %-8s rep %d/%d   ", row.backing.c_str(), row.method.c_str(),
                 row.plan.c_str(), rep + 1, reps);
}

void measure(Row& row, int reps, const Step& pin, const Step& unpin) {
  for (int r = 0; r < reps; ++r) {
    progress(row, r, reps);
    if (!measure_once(row, pin, unpin)) break;
  }
  if (kProgress) std::fprintf(stderr, "\r%60s\r", "");
}

std::string errstr(const Error& e) {
  std::string s(e.name());
  if (e.sys_errno != 0) s += std::string(" (") + std::strerror(e.sys_errno) + ")";
  return s;
}

// VFIO: a container with the group, opened once per run.
struct VfioRig {
  std::unique_ptr<vfio::Container> container;
  std::unique_ptr<vfio::Group> group;
  std::string error;
  explicit VfioRig(int group_no) {
    auto c = vfio::Container::open();
    if (!c.ok()) {
      error = "cannot open /dev/vfio/vfio: " + errstr(c.error());
      return;
    }
    container = std::move(c.value());
    auto g = vfio::Group::open(group_no);
    if (!g.ok()) {
      error = "cannot open group " + std::to_string(group_no) + ": " + errstr(g.error());
      return;
    }
    group = std::move(g.value());
    if (Status s = group->attach(*container); !s.ok()) error = "attach: " + errstr(s.error());
  }
};

// The VFIO plans of one backing, measured in alternating order (per4k,
// perfolio, planned, raw, per4k, ...): the machines are noisy, and the
// planned-vs-raw comparison wants the two side by side in every round.
void run_vfio(std::vector<Row>& rows, const std::string& backing, const std::string& method,
              Memory& m, VfioRig& rig, uint64_t iova_base, int reps) {
  const struct {
    const char* name;
    std::optional<vfio::PlanPolicy> policy;  // none: one raw MAP_DMA
  } plans[] = {{"per4k", vfio::PlanPolicy::kPerPage},
               {"perfolio", vfio::PlanPolicy::kPerFolio},
               {"planned", vfio::PlanPolicy::kMinimal},
               {"raw", std::nullopt}};
  struct Case {
    Row row;
    std::unique_ptr<vfio::DmaMapper> mapper;
    Step pin, unpin;
  };
  std::vector<Case> cases;
  const vfio::DmaRegion region{reinterpret_cast<uint64_t>(m.p), iova_base, m.size, m.page, {}};
  for (const auto& plan : plans) {
    Case c{Row{backing, method, plan.name, 0, {}, {}}, nullptr, {}, {}};
    if (!rig.error.empty()) {
      c.row.skipped = rig.error;
    } else if (plan.policy) {
      auto avail = rig.container->info().dma_avail.value_or(UINT32_MAX);
      auto p = vfio::plan_dma(std::span(&region, 1), rig.container->info(), *plan.policy, avail);
      if (!p.ok()) {
        c.row.skipped = "plan refused: " + errstr(p.error());
        if (p.error() == Errc::kDmaLimit) c.row.skipped += " (more calls than DMA_AVAIL)";
      } else {
        c.row.calls = p->calls.size();
        c.mapper = std::make_unique<vfio::DmaMapper>(*rig.container, *plan.policy);
        vfio::DmaMapper* mp = c.mapper.get();
        c.pin = [mp, region] {
          Status s = mp->map(std::span(&region, 1));
          return s.ok() ? std::string() : errstr(s.error());
        };
        // Unmapped with the granularity it was mapped (one call per mapping),
        // as a mapper releasing a region does.
        c.unpin = [mp, region] {
          Status s = mp->unmap(std::span(&region, 1));
          return s.ok() ? std::string() : errstr(s.error());
        };
      }
    } else {
      c.row.calls = 1;
      vfio::Container* ct = rig.container.get();
      c.pin = [ct, region] {
        Status s = ct->map_dma(region.vaddr, region.iova, region.size);
        return s.ok() ? std::string() : "one MAP_DMA of the whole range refused: " + errstr(s.error());
      };
      c.unpin = [ct, region] {
        auto r = ct->unmap_dma(region.iova, region.size);
        return r.ok() ? std::string() : errstr(r.error());
      };
    }
    cases.push_back(std::move(c));
  }
  for (int r = 0; r < reps; ++r)
    for (Case& c : cases) {
      if (!c.row.skipped.empty() || !c.pin) continue;
      progress(c.row, r, reps);
      (void)measure_once(c.row, c.pin, c.unpin);
    }
  if (kProgress) std::fprintf(stderr, "\r%60s\r", "");
  for (Case& c : cases) rows.push_back(std::move(c.row));
}

// An IOVA base for `size`: 1 GiB-aligned inside the first usable range that
// holds all of it (no hole crossed, so one raw MAP_DMA is possible); else the
// first range's start (the plan then splits at the holes).
uint64_t pick_iova(const vfio::IommuInfo& info, uint64_t size) {
  for (const vfio::IovaRange& r : info.ranges) {
    uint64_t base = (r.start + k1G - 1) & ~(k1G - 1);
    if (base >= r.start && base <= r.last && r.last - base >= size - 1) return base;
  }
  return info.ranges.front().start;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t size = 256ull << 20;
  std::vector<std::string> backings = {"anon4k", "thp", "huge2m", "huge1g"};
  std::vector<std::string> methods = {"iouring", "mlock"};
  int reps = 5;
  std::string json_path, csv_path;
  uint64_t iova_base = 0;
  bool iova_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (auto eq = a.find('='); eq != std::string::npos) return a.substr(eq + 1);
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    auto is = [&](const char* opt) { return a == opt || a.rfind(std::string(opt) + "=", 0) == 0; };
    if (is("--size")) {
      auto s = parse_size(value());
      if (!s || *s % k4K != 0) usage("--size must be a positive multiple of 4K, at most 1T");
      size = *s;
    } else if (is("--backing")) {
      backings = split(value());
    } else if (is("--method")) {
      methods = split(value());
    } else if (is("--reps")) {
      reps = std::atoi(value().c_str());
      if (reps < 1 || reps > 1000) usage("--reps must be 1..1000");
    } else if (is("--json")) {
      json_path = value();
    } else if (is("--csv")) {
      csv_path = value();
    } else if (is("--iova")) {
      std::string v = value();
      char* end = nullptr;
      errno = 0;
      iova_base = std::strtoull(v.c_str(), &end, 0);
      if (v.empty() || *end != '\0' || errno != 0 || iova_base % k4K != 0)
        usage("--iova must be a 4 KiB-aligned address (0x... or decimal)");
      iova_given = true;
    } else if (a == "--help" || a == "-h") {
      usage("pinning benchmark");
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  for (const auto& b : backings)
    if (b != "anon4k" && b != "thp" && b != "huge2m" && b != "huge1g")
      usage(("unknown backing " + b).c_str());
  for (const auto& m : methods)
    if (m != "iouring" && m != "mlock" && m.rfind("vfio:", 0) != 0)
      usage(("unknown method " + m).c_str());

  std::printf("sluice-pinbench: %" PRIu64 " MiB, %d repetitions\n", size >> 20, reps);
  std::vector<Row> rows;
  std::vector<std::unique_ptr<VfioRig>> rigs;  // one per group, opened once
  for (const std::string& backing : backings) {
    Memory mem;
    std::string why = allocate(backing, size, mem);
    for (const std::string& method : methods) {
      if (!why.empty()) {
        if (method.rfind("vfio:", 0) == 0) {
          for (const char* plan : {"per4k", "perfolio", "planned", "raw"})
            rows.push_back(Row{backing, method, plan, 0, {}, why});
        } else {
          rows.push_back(Row{backing, method, "-", 0, {}, why});
        }
        continue;
      }
      if (method == "mlock") {
        Row row{backing, method, "-", 1, {}, {}};
        measure(
            row, reps,
            [&] { return ::mlock(mem.p, size) == 0 ? std::string() : std::string(std::strerror(errno)); },
            [&] { return ::munlock(mem.p, size) == 0 ? std::string() : std::string(std::strerror(errno)); });
        rows.push_back(std::move(row));
      } else if (method == "iouring") {
        Row row{backing, method, "-", 1, {}, {}};
        io_uring ring;
        if (int r = io_uring_queue_init(4, &ring, 0); r < 0) {
          row.skipped = std::string("io_uring_queue_init: ") + std::strerror(-r);
        } else {
          // One buffer per GiB (the kernel's per-buffer limit), registered in one call.
          std::vector<iovec> iov;
          for (uint64_t off = 0; off < size; off += k1G)
            iov.push_back(iovec{mem.p + off, static_cast<size_t>(std::min(k1G, size - off))});
          measure(
              row, reps,
              [&] {
                int e = io_uring_register_buffers(&ring, iov.data(), static_cast<unsigned>(iov.size()));
                return e == 0 ? std::string() : std::string(std::strerror(-e));
              },
              [&] {
                int e = io_uring_unregister_buffers(&ring);
                return e == 0 ? std::string() : std::string(std::strerror(-e));
              });
          io_uring_queue_exit(&ring);
        }
        rows.push_back(std::move(row));
      } else {
        int group = std::atoi(method.c_str() + 5);
        VfioRig* rig = nullptr;
        for (auto& r : rigs)
          if (r->group && r->group->number() == group) rig = r.get();
        if (rig == nullptr) {
          rigs.push_back(std::make_unique<VfioRig>(group));
          rig = rigs.back().get();
        }
        uint64_t base = iova_base;
        if (!iova_given && rig->error.empty()) base = pick_iova(rig->container->info(), size);
        run_vfio(rows, backing, method, mem, *rig, base, reps);
      }
    }
  }

  std::printf("%-7s %-9s %-9s %8s %10s %10s %10s %9s %12s\n", "backing", "method", "plan", "calls",
              "pin ms", "min", "max", "GiB/s", "unpin ms");
  for (const Row& r : rows) {
    if (!r.skipped.empty()) {
      std::printf("%-7s %-9s %-9s skipped: %s\n", r.backing.c_str(), r.method.c_str(), r.plan.c_str(),
                  r.skipped.c_str());
      continue;
    }
    std::vector<double> pin, unpin;
    for (const Sample& s : r.samples) {
      pin.push_back(s.pin_ms);
      unpin.push_back(s.unpin_ms);
    }
    double med = median(pin);
    std::printf("%-7s %-9s %-9s %8" PRIu64 " %10.3f %10.3f %10.3f %9.2f %12.3f\n", r.backing.c_str(),
                r.method.c_str(), r.plan.c_str(), r.calls, med, *std::min_element(pin.begin(), pin.end()),
                *std::max_element(pin.begin(), pin.end()),
                med > 0 ? static_cast<double>(size) / k1G / (med / 1000) : 0, median(unpin));
  }

  // The planner's overhead against the kernel's floor: per round, planned
  // time over raw time (same range, same round), median over rounds.
  for (size_t i = 0; i + 1 < rows.size(); ++i) {
    const Row& p = rows[i];
    const Row& r = rows[i + 1];
    if (p.plan != "planned" || r.plan != "raw" || p.samples.empty() ||
        p.samples.size() != r.samples.size())
      continue;
    std::vector<double> ratio;
    for (size_t k = 0; k < p.samples.size(); ++k) ratio.push_back(p.samples[k].pin_ms / r.samples[k].pin_ms);
    std::printf("%s %s: planned (%" PRIu64 " call%s) / raw MAP_DMA (1 call) = %.3f, median of %zu alternating rounds\n",
                p.backing.c_str(), p.method.c_str(), p.calls, p.calls == 1 ? "" : "s", median(ratio),
                ratio.size());
  }

  if (!json_path.empty() || !csv_path.empty()) {
    boost::json::array arr;
    std::ostringstream csv;
    csv << "backing,method,plan,size_bytes,calls,reps,pin_median_ms,pin_min_ms,pin_max_ms,unpin_median_ms,skipped\n";
    for (const Row& r : rows) {
      boost::json::object o{{"backing", r.backing}, {"method", r.method}, {"plan", r.plan},
                            {"size_bytes", size}, {"calls", r.calls}};
      std::vector<double> pin, unpin;
      for (const Sample& s : r.samples) {
        pin.push_back(s.pin_ms);
        unpin.push_back(s.unpin_ms);
      }
      if (r.skipped.empty() && !pin.empty()) {
        o["reps"] = pin.size();
        o["pin_ms"] = boost::json::value_from(pin);
        o["unpin_ms"] = boost::json::value_from(unpin);
        o["pin_median_ms"] = median(pin);
        o["unpin_median_ms"] = median(unpin);
        csv << r.backing << ',' << r.method << ',' << r.plan << ',' << size << ',' << r.calls << ','
            << pin.size() << ',' << median(pin) << ',' << *std::min_element(pin.begin(), pin.end())
            << ',' << *std::max_element(pin.begin(), pin.end()) << ',' << median(unpin) << ",\n";
      } else {
        o["skipped"] = r.skipped;
        std::string why = r.skipped;
        std::replace(why.begin(), why.end(), ',', ';');
        std::replace(why.begin(), why.end(), '"', '\'');
        csv << r.backing << ',' << r.method << ',' << r.plan << ',' << size << ",0,0,,,,,\"" << why
            << "\"\n";
      }
      arr.push_back(std::move(o));
    }
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      f << boost::json::serialize(arr) << "\n";
      if (!f) {
        std::fprintf(stderr, "sluice-pinbench: cannot write %s\n", json_path.c_str());
        return 1;
      }
    }
    if (!csv_path.empty()) {
      std::ofstream f(csv_path);
      f << csv.str();
      if (!f) {
        std::fprintf(stderr, "sluice-pinbench: cannot write %s\n", csv_path.c_str());
        return 1;
      }
    }
  }
  return 0;
}
