// Attaching Sluice devices to a running VMM (QEMU, over QMP).
//
// attach: the VMM's guest memory must be shared (every memory backend
// share=on: a vhost-user back-end maps it), and the device must not be there
// already; then chardev-add (a unix socket client of the export, reconnect
// on) and device_add (vhost-user-blk-pci), and the device must be realized.
// Anything failing after chardev-add removes the chardev again: nothing is
// left half attached. QEMU's own errors are reported verbatim.
// detach: device_del, wait for DEVICE_DELETED (the guest acknowledges the
// unplug), then chardev-remove.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace sluice::control {

struct AttachRequest {
  std::string export_id;
  std::string socket;    // the export's vhost-user socket
  std::string vmm;       // the VMM's QMP socket
  uint16_t queues = 1;   // virtqueues (blk) or queue pairs (net)
  bool net = false;      // virtio-net-pci over netdev vhost-user, not vhost-user-blk-pci
  std::string mac;       // net: the port's MAC, given to the device (a locked port sends only with it)
  int cancel_fd = -1;    // readable: give up at once (QmpClient)
};

struct Attachment {
  std::string vmm;
  std::string device_id;   // QEMU's id of the device (sluice-<export>)
  std::string chardev_id;  // and of its chardev
  std::string qemu_version;
  std::string netdev_id;   // and of its netdev (net exports only)
};

// Both throw QmpError (QEMU's words) or std::runtime_error (ours).
Attachment qmp_attach(const AttachRequest& r, std::chrono::milliseconds timeout = std::chrono::seconds(20));
void qmp_detach(const Attachment& a, std::chrono::milliseconds unplug_timeout = std::chrono::seconds(60),
                int cancel_fd = -1);

// "qmp:/path" or "/path" -> "/path". Throws std::invalid_argument.
std::string parse_vmm(const std::string& spec);

}  // namespace sluice::control
