#include "vfio/kernel.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::vfio {

namespace {

class RealKernel final : public Kernel {
 public:
  int open(const char* path, int flags) override {
    int fd = ::open(path, flags | O_CLOEXEC);
    return fd >= 0 ? fd : -errno;
  }
  int close(int fd) override { return ::close(fd) == 0 ? 0 : -errno; }
  int ioctl(int fd, unsigned long request, void* arg) override {
    int r = ::ioctl(fd, request, arg);
    return r >= 0 ? r : -errno;
  }
  ssize_t pread(int fd, void* buf, size_t len, off_t off) override {
    ssize_t r = ::pread(fd, buf, len, off);
    return r >= 0 ? r : -errno;
  }
  ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) override {
    ssize_t r = ::pwrite(fd, buf, len, off);
    return r >= 0 ? r : -errno;
  }
  void* mmap(size_t len, int prot, int fd, off_t off, int* err) override {
    void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, off);
    if (p == MAP_FAILED) {
      *err = errno;
      return nullptr;
    }
    return p;
  }
  int munmap(void* addr, size_t len) override { return ::munmap(addr, len) == 0 ? 0 : -errno; }
};

}  // namespace

Kernel& Kernel::real() {
  static RealKernel k;
  return k;
}

}  // namespace sluice::vfio
