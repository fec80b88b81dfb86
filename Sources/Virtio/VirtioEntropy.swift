/// Where the entropy device's bytes come from. The device process implements it with getrandom(2); tests with a
/// deterministic generator.
public protocol EntropySource: AnyObject {
    /// Fills the start of `buffer` (a range of guest RAM) with random bytes and returns how many it filled
    /// (0...buffer.count; fewer when the source is short, which the guest sees as a shorter used length).
    func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int
}

/// The virtio entropy device (device ID 4, virtio 1.2 section 5.4): one queue, no configuration, no features.
/// Each request is filled completely with random bytes, buffer by buffer, as far as the source delivers; a
/// device-readable buffer in the chain is skipped (there is nothing to read from the driver). The used length is
/// what was written.
public final class VirtioEntropy: VirtioDeviceBackend {
    public let source: EntropySource
    public let queueSize: UInt16

    public var deviceID: UInt32 { VirtioDeviceID.entropy }
    public var deviceFeatures: UInt64 { 0 }
    public var queueMaxSizes: [UInt16] { [queueSize] }

    public init(source: EntropySource, queueSize: UInt16 = 256) {
        self.source = source
        self.queueSize = queueSize
    }

    public func readConfig(offset: UInt64, size: Int) -> UInt64 { 0 }
    public func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool { false }
    public func activate(features: UInt64) {}
    public func reset() {}

    public func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32 {
        var written: UInt64 = 0
        for buffer in request.writable where buffer.length > 0 {
            // Cap at what a u32 used length can say (a chain may name the same large buffer many times).
            let room = UInt64(UInt32.max) - written
            guard room > 0, let bytes = memory.bytes(at: buffer.gpa, count: Int(min(UInt64(buffer.length), room))) else {
                break
            }
            let filled = min(max(source.fill(bytes), 0), bytes.count)
            written += UInt64(filled)
            if filled < bytes.count { break } // the source ran dry: the used length says where the bytes end
        }
        return UInt32(written)
    }
}
