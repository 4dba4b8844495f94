// virtio-blk device model (virtio 1.2, section 5.2) over io_uring.
//
// Each started queue becomes a BlkQueue owned by one worker. A request goes
// from the ring to the kernel with its iovecs pointing into guest memory (no
// copy), and its status is written when the last of its operations completes.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/blk/request.h"
#include "dataplane/device/virtio_device.h"
#include "dataplane/worker/queue_set.h"
#include "dataplane/worker/worker.h"

namespace sluice::blk {

// Feature bits (5.2.3).
inline constexpr unsigned kFSizeMax = 1;
inline constexpr unsigned kFSegMax = 2;
inline constexpr unsigned kFRo = 5;
inline constexpr unsigned kFBlkSize = 6;
inline constexpr unsigned kFFlush = 9;
inline constexpr unsigned kFMq = 12;
inline constexpr unsigned kFDiscard = 13;
inline constexpr unsigned kFWriteZeroes = 14;

// struct virtio_blk_config up to write_zeroes_may_unmap (5.2.4).
struct __attribute__((packed)) Config {
  uint64_t capacity;
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
static_assert(sizeof(Config) == 60);

struct BlkOptions {
  std::string file;
  bool read_only = false;
  uint64_t size = 0;       // create or grow the file to this size when non-zero
  uint16_t queues = 1;
  uint16_t queue_size = 256;  // largest ring we accept
  std::string serial = "sluice";
  bool direct = true;      // use O_DIRECT when the file allows it
  // No backing file: reads return without touching the buffer, writes and
  // flushes succeed at once (like QEMU's null-co). Measures the data path
  // itself. Needs size.
  bool null_backend = false;
};

// Per-queue counters, written by the owning worker, read by the control plane.
struct BlkQueueStats {
  std::atomic<uint64_t> requests{0}, read_bytes{0}, write_bytes{0}, errors{0}, flushes{0},
      batches{0};
  // Completions published per used-index update: a histogram with bucket
  // upper bounds 1, 2, 4, ..., 128 and one for anything larger.
  static constexpr unsigned kBatchBuckets = 9;
  std::atomic<uint64_t> batch_hist[kBatchBuckets] = {};
  std::atomic<uint64_t> batch_sum{0};
  std::atomic<bool> broken{false};  // the guest broke the ring (sticky until restart)
  std::atomic<Errc> broken_reason{Errc::kOk};
  std::atomic<uint64_t> fault_gpa{0};  // where a guest memory fault broke the ring (0: none)
  // Requests failed because their guest memory faulted (now or before: a
  // poisoned page), in our accesses or the kernel's (EFAULT).
  std::atomic<uint64_t> guest_faults{0};
  void record_batch(uint64_t n) noexcept {
    unsigned b = 0;
    while (b + 1 < kBatchBuckets && n > (uint64_t{1} << b)) ++b;
    batch_hist[b].fetch_add(1, std::memory_order_relaxed);
    batch_sum.fetch_add(n, std::memory_order_relaxed);
  }
};

class BlkQueue;

class BlkDevice : public VirtioDevice {
 public:
  // Opens (creating when asked) the backing file; workers serve the queues,
  // queue i going to workers[i % size].
  static Result<std::unique_ptr<BlkDevice>> open(const BlkOptions& opts,
                                                 std::vector<Worker*> workers);
  ~BlkDevice() override;

  uint32_t device_id() const override { return 2; }
  uint64_t device_features() const override;
  uint16_t max_queues() const override { return opts_.queues; }
  uint16_t max_queue_size() const override { return opts_.queue_size; }
  std::span<const uint8_t> config() const override;
  Status write_config(uint32_t offset, std::span<const uint8_t> data) override;
  void set_driver_features(uint64_t f) override { driver_features_ = f; }
  Status queue_started(const QueueBinding& b) override;
  void queue_stopped(uint16_t index) override;
  uint32_t abandoned_queues() const override { return queues_.abandoned(); }
  void call_fd_changed(uint16_t index, int call_fd) override;
  void reset() override;

  const BlkOptions& options() const noexcept { return opts_; }
  uint64_t capacity_bytes() const noexcept { return capacity_; }
  const BlkQueueStats& stats(uint16_t q) const { return *stats_[q]; }
  bool direct_io() const noexcept { return direct_fd_.valid(); }
  bool remote_fs() const noexcept { return remote_fs_; }

 private:
  friend class BlkQueue;
  BlkDevice() = default;
  void init_geometry(uint64_t bytes);  // capacity, limits, config space

  BlkOptions opts_;
  UniqueFd fd_;         // buffered (and always valid)
  UniqueFd direct_fd_;  // O_DIRECT, when the file system allows it
  uint64_t capacity_ = 0;
  Config config_{};
  DiskLimits limits_{};
  uint64_t driver_features_ = 0;
  std::atomic<bool> zero_range_unsupported_{false};
  bool memory_backed_ = false;  // tmpfs/ramfs: buffered I/O is a copy that never waits on a device
  bool remote_fs_ = false;      // FUSE, NFS, SMB, ...: every request IOSQE_ASYNC, none inline
  WorkerQueues<BlkQueue> queues_;
  std::vector<std::unique_ptr<BlkQueueStats>> stats_;
};

}  // namespace sluice::blk
