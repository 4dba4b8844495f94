#include "control/vmm.h"

#include <stdexcept>

#include "control/qmp.h"
#include "dataplane/base/log.h"

namespace sluice::control {

namespace json = boost::json;

std::string parse_vmm(const std::string& spec) {
  std::string p = spec.rfind("qmp:", 0) == 0 ? spec.substr(4) : spec;
  if (p.empty() || p[0] != '/') throw std::invalid_argument("--vmm: expected qmp:/path/to/qmp.sock");
  return p;
}

namespace {

// Every memory backend must be shared; a VMM with none (RAM not from a
// backend) cannot be served either.
void check_shared_memory(QmpClient& q) {
  json::value mem = q.execute("query-memdev");
  if (!mem.is_array() || mem.as_array().empty())
    throw std::runtime_error(
        "the VMM's guest memory is not shared: it has no memory backend (start QEMU with "
        "-object memory-backend-memfd,id=mem,size=...,share=on -machine memory-backend=mem)");
  for (const json::value& m : mem.as_array()) {
    if (!m.is_object()) continue;
    const json::object& o = m.as_object();
    bool share = o.contains("share") && o.at("share").is_bool() && o.at("share").as_bool();
    if (!share) {
      std::string id = o.contains("id") && o.at("id").is_string() ? std::string(o.at("id").as_string()) : "?";
      throw std::runtime_error("the VMM's guest memory is not shared: memory backend '" + id +
                               "' has share=off (a vhost-user back-end must map guest memory; use "
                               "memory-backend-memfd or memory-backend-file with share=on)");
    }
  }
}

// Whether a QMP list answer holds an object whose `key` is `name`.
bool lists(const json::value& v, const char* key, const std::string& name) {
  if (!v.is_array()) return false;
  for (const json::value& e : v.as_array()) {
    const json::value* k = e.is_object() ? e.as_object().if_contains(key) : nullptr;
    if (k != nullptr && k->is_string() && k->as_string() == name) return true;
  }
  return false;
}

bool has_chardev(QmpClient& q, const std::string& id) { return lists(q.execute("query-chardev"), "label", id); }

bool has_device(QmpClient& q, const std::string& id) {
  return lists(q.execute("qom-list", {{"path", "/machine/peripheral"}}), "name", id);
}

}  // namespace

Attachment qmp_attach(const AttachRequest& r, std::chrono::milliseconds timeout) {
  QmpClient q(r.vmm, std::chrono::seconds(5), r.cancel_fd);
  Attachment a{r.vmm, "sluice-" + r.export_id, "sluice-" + r.export_id, q.version()};
  check_shared_memory(q);
  if (has_device(q, a.device_id) || has_chardev(q, a.chardev_id))
    throw std::runtime_error("export '" + r.export_id + "' is already attached to this VMM (device " + a.device_id + ")");
  json::object backend{
      {"type", "socket"},
      {"data", json::object{{"addr", json::object{{"type", "unix"}, {"data", json::object{{"path", r.socket}}}}},
                            {"server", false},
                            {"reconnect", 1}}}};
  q.execute("chardev-add", {{"id", a.chardev_id}, {"backend", backend}}, timeout);
  try {
    if (r.net) {
      // netdev vhost-user over the chardev, then virtio-net-pci on it.
      a.netdev_id = a.device_id;
      q.execute("netdev_add",
                {{"type", "vhost-user"}, {"id", a.netdev_id}, {"chardev", a.chardev_id}, {"queues", r.queues}},
                timeout);
      json::object dev{{"driver", "virtio-net-pci"}, {"id", a.device_id}, {"netdev", a.netdev_id}};
      if (r.queues > 1) dev["mq"] = true;
      if (!r.mac.empty()) dev["mac"] = r.mac;
      // Under TCG QEMU 7.2 crashes when a vhost-user-net device starts with
      // MSI-X: INTx there, MSI-X with KVM.
      json::value kvm = q.execute("query-kvm");
      bool kvm_on = kvm.is_object() && kvm.as_object().if_contains("enabled") &&
                    kvm.as_object().at("enabled").is_bool() && kvm.as_object().at("enabled").as_bool();
      dev["vectors"] = kvm_on ? 2 * r.queues + 2 : 0;
      try {
        q.execute("device_add", dev, timeout);
      } catch (const std::exception&) {
        try {
          q.execute("netdev_del", {{"id", a.netdev_id}}, std::chrono::seconds(5));
        } catch (const std::exception& e) {
          LOG_WARN("vmm", "undoing netdev %s: %s", a.netdev_id.c_str(), e.what());
        }
        throw;
      }
    } else {
      q.execute("device_add",
                {{"driver", "vhost-user-blk-pci"}, {"id", a.device_id}, {"chardev", a.chardev_id},
                 {"num-queues", r.queues}},
                timeout);
    }
    json::value realized = q.execute(
        "qom-get", {{"path", "/machine/peripheral/" + a.device_id}, {"property", "realized"}}, timeout);
    if (!realized.is_bool() || !realized.as_bool())
      throw std::runtime_error("the VMM did not realize device " + a.device_id);
  } catch (const std::exception&) {
    // Undo: no chardev left behind (best effort: the VMM may be gone), then
    // the original error, QEMU's words or ours.
    if (!a.netdev_id.empty() && has_device(q, a.device_id) == false) {
      try {
        q.execute("netdev_del", {{"id", a.netdev_id}}, std::chrono::seconds(5));
      } catch (const std::exception&) {
        // already removed by the inner undo
      }
    }
    try {
      q.execute("chardev-remove", {{"id", a.chardev_id}}, std::chrono::seconds(5));
    } catch (const std::exception& e) {
      LOG_WARN("vmm", "undoing chardev %s: %s", a.chardev_id.c_str(), e.what());
    }
    throw;
  }
  return a;
}

void qmp_detach(const Attachment& a, std::chrono::milliseconds unplug_timeout, int cancel_fd) {
  QmpClient q(a.vmm, std::chrono::seconds(5), cancel_fd);
  try {
    q.execute("device_del", {{"id", a.device_id}});
    q.wait_event("DEVICE_DELETED", "device", a.device_id, unplug_timeout);
  } catch (const QmpError& e) {
    // Already gone (DeviceNotFound): fall through to the chardev.
    if (e.error_class != "DeviceNotFound") throw;
  }
  if (!a.netdev_id.empty()) {
    try {
      q.execute("netdev_del", {{"id", a.netdev_id}});
    } catch (const QmpError& e) {
      if (e.error_class != "DeviceNotFound") throw;
    }
  }
  try {
    q.execute("chardev-remove", {{"id", a.chardev_id}});
  } catch (const QmpError& e) {
    if (e.description.find("not found") == std::string::npos) throw;
  }
}

}  // namespace sluice::control
