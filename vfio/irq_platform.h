// Can this machine deliver a device's MSI straight into a guest (IRQ bypass)?
// Two halves must agree: the CPU's virtual interrupt delivery (x86 APICv /
// AMD AVIC; arm64 GICv4 vLPIs) and the IOMMU's interrupt posting (VT-d
// posted interrupts, AMD guest virtual APIC). Each is read from where the
// kernel exposes it; when it cannot be read, the answer says so instead of
// guessing.
#pragma once

#include <string>

namespace sluice::vfio {

struct IrqPlatform {
  std::string arch;           // "x86_64", "aarch64", ...
  std::string kvm;            // the KVM module in use ("kvm_intel", "kvm_amd", "kvm_pvm", "none")
  std::string cpu;            // e.g. "APICv enabled (kvm_intel enable_apicv=Y)"
  std::string iommu;          // e.g. "VT-d posted interrupts: supported by dmar0 (cap bit 59)"
  int cpu_ok = -1;            // 1 yes, 0 no, -1 unknown
  int iommu_ok = -1;
  // Bypass is possible only when both are known to be available.
  bool bypass_possible() const noexcept { return cpu_ok == 1 && iommu_ok == 1; }
};

// `sysroot` prefixes every path read (tests point it at a fake /sys).
IrqPlatform probe_irq_platform(const std::string& sysroot = "");

}  // namespace sluice::vfio
