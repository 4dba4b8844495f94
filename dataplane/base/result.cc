#include "dataplane/base/result.h"

namespace sluice {

std::string_view errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::kOk: return "ok";
    case Errc::kSystem: return "system";
    case Errc::kInvalidArgument: return "invalid-argument";
    case Errc::kRegionZeroSize: return "region-zero-size";
    case Errc::kRegionOverlap: return "region-overlap";
    case Errc::kRegionPastEndOfFile: return "region-past-end-of-file";
    case Errc::kRegionAddressOverflow: return "region-address-overflow";
    case Errc::kRegionBadFd: return "region-bad-fd";
    case Errc::kRegionNotFound: return "region-not-found";
    case Errc::kTooManyRegions: return "too-many-regions";
    case Errc::kMemoryLimit: return "memory-limit";
    case Errc::kAddressNotMapped: return "address-not-mapped";
    case Errc::kQueueBadSize: return "queue-bad-size";
    case Errc::kQueueMisaligned: return "queue-misaligned";
    case Errc::kQueueRingNotContiguous: return "queue-ring-not-contiguous";
    case Errc::kQueueNotReady: return "queue-not-ready";
    case Errc::kQueueBroken: return "queue-broken";
    case Errc::kGuestMemoryFault: return "guest-memory-fault";
    case Errc::kGuestMemoryPoisoned: return "guest-memory-poisoned";
    case Errc::kAvailIndexTooFar: return "avail-index-too-far";
    case Errc::kHeadOutOfRange: return "head-out-of-range";
    case Errc::kNextOutOfRange: return "next-out-of-range";
    case Errc::kChainTooLong: return "chain-too-long";
    case Errc::kIndirectBadLength: return "indirect-bad-length";
    case Errc::kIndirectTooLong: return "indirect-too-long";
    case Errc::kIndirectNested: return "indirect-nested";
    case Errc::kIndirectWithNext: return "indirect-with-next";
    case Errc::kIndirectNotNegotiated: return "indirect-not-negotiated";
    case Errc::kDescAddressOverflow: return "desc-address-overflow";
    case Errc::kDescNotMapped: return "desc-not-mapped";
    case Errc::kReadableAfterWritable: return "readable-after-writable";
    case Errc::kChainTooManySegments: return "chain-too-many-segments";
    case Errc::kChainTooLarge: return "chain-too-large";
    case Errc::kUsedIdOutOfRange: return "used-id-out-of-range";
    case Errc::kUsedOutOfOrder: return "used-out-of-order";
    case Errc::kUsedIndexTooFar: return "used-index-too-far";
    case Errc::kQueueFull: return "queue-full";
    case Errc::kPeerClosed: return "peer-closed";
    case Errc::kMsgTruncated: return "msg-truncated";
    case Errc::kMsgBadVersion: return "msg-bad-version";
    case Errc::kMsgTooLarge: return "msg-too-large";
    case Errc::kMsgBadSize: return "msg-bad-size";
    case Errc::kMsgBadFdCount: return "msg-bad-fd-count";
    case Errc::kMsgUnknownRequest: return "msg-unknown-request";
    case Errc::kMsgNotNegotiated: return "msg-not-negotiated";
    case Errc::kFeatureNotOffered: return "feature-not-offered";
    case Errc::kVringIndexOutOfRange: return "vring-index-out-of-range";
    case Errc::kVringNotConfigured: return "vring-not-configured";
    case Errc::kVringAddrNotMapped: return "vring-addr-not-mapped";
    case Errc::kNotEventFd: return "not-eventfd";
    case Errc::kConfigOutOfRange: return "config-out-of-range";
    case Errc::kMacLocked: return "mac-locked";
    case Errc::kQueueRunning: return "queue-running";
    case Errc::kBlkNoStatus: return "blk-no-status";
    case Errc::kBlkShortHeader: return "blk-short-header";
    case Errc::kBlkBadDirection: return "blk-bad-direction";
    case Errc::kBlkUnaligned: return "blk-unaligned";
    case Errc::kBlkOutOfRange: return "blk-out-of-range";
    case Errc::kBlkReadOnly: return "blk-read-only";
    case Errc::kBlkUnsupported: return "blk-unsupported";
    case Errc::kBlkBadSegments: return "blk-bad-segments";
    case Errc::kVfioApiVersion: return "vfio-api-version";
    case Errc::kVfioNoType1: return "vfio-no-type1";
    case Errc::kVfioGroupNotViable: return "vfio-group-not-viable";
    case Errc::kVfioInfoMalformed: return "vfio-info-malformed";
    case Errc::kVfioRegionBad: return "vfio-region-bad";
    case Errc::kVfioIrqBad: return "vfio-irq-bad";
    case Errc::kDmaMisaligned: return "dma-misaligned";
    case Errc::kDmaOutsideIovaRanges: return "dma-outside-iova-ranges";
    case Errc::kDmaLimit: return "dma-limit";
    case Errc::kDmaOverlap: return "dma-overlap";
    case Errc::kDmaNotMapped: return "dma-not-mapped";
    case Errc::kVirtioNoCap: return "virtio-no-cap";
    case Errc::kVirtioFeatures: return "virtio-features";
    case Errc::kVirtioQueueUnavailable: return "virtio-queue-unavailable";
    case Errc::kVirtioDeviceFailed: return "virtio-device-failed";
    case Errc::kVirtioBadUsed: return "virtio-bad-used";
  }
  return "unknown";
}

}  // namespace sluice
