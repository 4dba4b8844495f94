// The queues of one device, each a Pollable served by a worker (queue i on
// workers[i % n]): what every device model that runs on the workers needs
// to start, stop and re-signal its queues. Control thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dataplane/worker/worker.h"

namespace sluice {

template <class Q>  // a Pollable with set_call_fd(int)
class WorkerQueues {
 public:
  WorkerQueues() = default;
  WorkerQueues(const WorkerQueues&) = delete;
  WorkerQueues& operator=(const WorkerQueues&) = delete;
  ~WorkerQueues() { stop_all(); }

  // Before any start(): the workers, and how many queues there are.
  void init(std::vector<Worker*> workers, size_t queues) {
    workers_ = std::move(workers);
    queues_.resize(queues);
  }
  size_t size() const noexcept { return queues_.size(); }
  // Replaces queue i (stopping a previous one) and hands it to its worker.
  void start(uint16_t i, std::unique_ptr<Q> q) {
    stop(i);
    worker(i).attach(q.get());
    queues_[i] = std::move(q);
  }
  // Returns once the worker has let go of queue i: true when its requests
  // completed, false when they did not within the worker's stop_timeout
  // (the queue was abandoned: Worker::retire).
  bool stop(uint16_t i) {
    if (i >= queues_.size() || !queues_[i]) return true;
    bool ok = worker(i).retire(std::move(queues_[i]));
    if (!ok) ++abandoned_;
    return ok;
  }
  void stop_all() {
    for (uint16_t i = 0; i < queues_.size(); ++i) stop(i);
  }
  // Queues whose stop was abandoned, since init.
  uint32_t abandoned() const noexcept { return abandoned_; }
  // A new call fd, in use by the worker's next burst when this returns.
  void set_call_fd(uint16_t i, int fd) {
    if (i >= queues_.size() || !queues_[i]) return;
    queues_[i]->set_call_fd(fd);
    worker(i).sync();
  }

 private:
  Worker& worker(uint16_t i) { return *workers_[i % workers_.size()]; }
  std::vector<Worker*> workers_;
  std::vector<std::unique_ptr<Q>> queues_;
  uint32_t abandoned_ = 0;
};

}  // namespace sluice
