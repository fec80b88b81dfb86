/// Feature bits of the virtio transport and ring layout (virtio 1.2 section 6), shared by every device type.
/// Device-specific bits (0...23) are defined next to their device.
public enum VirtioFeature {
    /// VIRTIO_F_INDIRECT_DESC: descriptors may point to a table of descriptors (2.7.5.3).
    public static let indirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_F_EVENT_IDX (a.k.a. VIRTIO_RING_F_EVENT_IDX): used_event / avail_event suppress notifications (2.7.7).
    public static let eventIndex: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1: a virtio 1.x (non-legacy) device. Required by this transport.
    public static let version1: UInt64 = 1 << 32

    /// What every device behind `VirtioMMIOTransport` offers on top of its own bits.
    public static let transportOffered: UInt64 = version1 | eventIndex | indirectDescriptors
}

/// Device status bits (virtio 1.2 section 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    /// Set by the device, never by the driver: the device hit an error it cannot recover from without a reset.
    public static let deviceNeedsReset: UInt32 = 64
    public static let failed: UInt32 = 128
}

/// Bits of the MMIO InterruptStatus register (4.2.2).
public enum VirtioInterrupt {
    /// The device used a buffer in at least one virtqueue.
    public static let usedBuffer: UInt32 = 1
    /// The configuration space (or the device status, e.g. DEVICE_NEEDS_RESET) changed.
    public static let configChange: UInt32 = 2
}

/// Split-ring descriptor flags (2.7.5).
public enum VirtqDescriptorFlag {
    /// The buffer continues via the `next` field.
    public static let next: UInt16 = 1
    /// The buffer is device write-only (otherwise device read-only).
    public static let write: UInt16 = 2
    /// The buffer holds a table of descriptors.
    public static let indirect: UInt16 = 4
}

/// Available ring flag (2.7.6): the driver asks not to be interrupted (ignored when EVENT_IDX is negotiated).
public enum VirtqAvailFlag {
    public static let noInterrupt: UInt16 = 1
}

/// Virtio device IDs (virtio 1.2 section 5).
public enum VirtioDeviceID {
    public static let network: UInt32 = 1
    public static let block: UInt32 = 2
    public static let console: UInt32 = 3
    public static let entropy: UInt32 = 4
    public static let vsock: UInt32 = 19
}
