// The one syscall seam of vfio/ (STYLE.md rule 14): every open, ioctl, close,
// mmap and config-space access of the VFIO objects goes through a Kernel. The
// real one calls the kernel; tests/support/fake_vfio provides a fake that
// enforces the type1 rules, so containers, groups, devices, the planner's
// executor and the memory listener are tested without /dev/vfio.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace sluice::vfio {

class Kernel {
 public:
  virtual ~Kernel() = default;
  // Each returns what the syscall returns, or -errno on failure.
  virtual int open(const char* path, int flags) = 0;
  virtual int close(int fd) = 0;
  virtual int ioctl(int fd, unsigned long request, void* arg) = 0;
  virtual ssize_t pread(int fd, void* buf, size_t len, off_t off) = 0;
  virtual ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) = 0;
  // MAP_FAILED-free: nullptr and *err = errno on failure.
  virtual void* mmap(size_t len, int prot, int fd, off_t off, int* err) = 0;
  virtual int munmap(void* addr, size_t len) = 0;

  // The process-wide real kernel.
  static Kernel& real();
};

// An fd opened through a Kernel and closed through it (RAII, move-only).
class KFd {
 public:
  KFd() = default;
  KFd(Kernel& k, int fd) : k_(&k), fd_(fd) {}
  KFd(KFd&& o) noexcept : k_(o.k_), fd_(std::exchange(o.fd_, -1)) {}
  KFd& operator=(KFd&& o) noexcept {
    if (this != &o) {
      reset();
      k_ = o.k_;
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  KFd(const KFd&) = delete;
  KFd& operator=(const KFd&) = delete;
  ~KFd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  void reset() noexcept {
    if (fd_ >= 0 && k_ != nullptr) (void)k_->close(fd_);
    fd_ = -1;
  }

 private:
  Kernel* k_ = nullptr;
  int fd_ = -1;
};

}  // namespace sluice::vfio
