#include "vfio/irq_platform.h"

#include <dirent.h>
#include <sys/klog.h>
#include <sys/utsname.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace sluice::vfio {

namespace {

bool read_text(const std::string& path, std::string& out) {
  std::ifstream f(path);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return true;
}

std::vector<std::string> list_dir(const std::string& path, const std::string& prefix) {
  std::vector<std::string> v;
  if (DIR* d = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind(prefix, 0) == 0) v.push_back(n);
    }
    ::closedir(d);
  }
  return v;
}

bool truthy(const std::string& v) { return v == "Y" || v == "y" || v == "1"; }

}  // namespace

IrqPlatform probe_irq_platform(const std::string& sysroot) {
  IrqPlatform p;
  utsname u{};
  p.arch = ::uname(&u) == 0 ? u.machine : "unknown";
  const std::string mod = sysroot + "/sys/module/";
  std::string v;
  if (p.arch == "x86_64" || p.arch == "i686") {
    if (read_text(mod + "kvm_intel/parameters/enable_apicv", v)) {
      p.kvm = "kvm_intel";
      p.cpu_ok = truthy(v);
      p.cpu = std::string("APICv ") + (p.cpu_ok ? "enabled" : "disabled") + " (kvm_intel enable_apicv=" + v + ")";
    } else if (read_text(mod + "kvm_amd/parameters/avic", v)) {
      p.kvm = "kvm_amd";
      p.cpu_ok = truthy(v);
      p.cpu = std::string("AVIC ") + (p.cpu_ok ? "enabled" : "disabled") + " (kvm_amd avic=" + v + ")";
    } else {
      // Another KVM flavour (e.g. kvm_pvm) or none: no such parameter to read.
      p.kvm = "none";
      for (const std::string& m : list_dir(mod, "kvm_")) p.kvm = m;
      p.cpu = p.kvm == "none" ? "unknown: no KVM vendor module loaded"
                              : "unknown: " + p.kvm + " exposes no APICv/AVIC parameter";
    }
    // Intel VT-d: capability register bit 59 is Posted Interrupt support.
    auto dmars = list_dir(sysroot + "/sys/class/iommu", "dmar");
    auto ivhds = list_dir(sysroot + "/sys/class/iommu", "ivhd");
    if (!dmars.empty()) {
      int yes = 0, readable = 0;
      for (const auto& d : dmars) {
        if (!read_text(sysroot + "/sys/class/iommu/" + d + "/intel-iommu/cap", v)) continue;
        ++readable;
        unsigned long long cap = std::strtoull(v.c_str(), nullptr, 16);
        yes += static_cast<int>((cap >> 59) & 1);
      }
      if (readable == 0) {
        p.iommu = "unknown: cannot read the VT-d capability registers";
      } else {
        p.iommu_ok = yes == readable;
        p.iommu = "VT-d posted interrupts: " + std::string(yes == readable ? "supported" : yes ? "partly supported" : "not supported") +
                  " (" + std::to_string(yes) + " of " + std::to_string(readable) + " DMAR units, cap bit 59)";
      }
    } else if (!ivhds.empty()) {
      int yes = 0, readable = 0;
      for (const auto& d : ivhds) {
        if (!read_text(sysroot + "/sys/class/iommu/" + d + "/amd-iommu/features", v)) continue;
        ++readable;
        // Extended feature register: GA (guest virtual APIC) support, bit 7.
        unsigned long long efr = std::strtoull(v.c_str(), nullptr, 16);
        yes += static_cast<int>((efr >> 7) & 1);
      }
      if (readable == 0) {
        p.iommu = "unknown: cannot read the AMD IOMMU feature registers";
      } else {
        p.iommu_ok = yes == readable;
        p.iommu = "AMD IOMMU guest virtual APIC: " + std::string(yes == readable ? "supported" : "not supported") +
                  " (EFR bit 7)";
      }
    } else {
      p.iommu = "unknown: no IOMMU in /sys/class/iommu";
    }
  } else if (p.arch == "aarch64") {
    p.kvm = list_dir(mod, "kvm").empty() ? "none" : "kvm";
    // GICv4 support is announced in the kernel log only.
    std::string log;
    int n = ::klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, nullptr, 0);
    if (n > 0) {
      log.resize(static_cast<size_t>(n));
      int got = ::klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log.data(), n);
      log.resize(got > 0 ? static_cast<size_t>(got) : 0);
    }
    if (log.empty()) {
      p.cpu = p.iommu = "unknown: cannot read the kernel log (GICv4 is only announced there)";
    } else if (log.find("GICv4.1") != std::string::npos || log.find("GICv4") != std::string::npos) {
      p.cpu_ok = p.iommu_ok = 1;
      p.cpu = p.iommu = log.find("GICv4.1") != std::string::npos ? "GICv4.1 vLPIs (kernel log)" : "GICv4 vLPIs (kernel log)";
    } else {
      p.cpu_ok = p.iommu_ok = 0;
      p.cpu = p.iommu = "no GICv4 in the kernel log";
    }
  } else {
    p.kvm = "unknown";
    p.cpu = p.iommu = "unknown: no probe for " + p.arch;
  }
  return p;
}

}  // namespace sluice::vfio
