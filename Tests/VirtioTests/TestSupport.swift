import Devices
import Virtio
import XCTest

/// Guest RAM for tests: a zeroed heap allocation of `size` bytes at guest-physical 0.
final class FakeRAM: GuestRAM {
    let buffer: UnsafeMutableRawBufferPointer
    var size: UInt64 { UInt64(buffer.count) }

    init(size: Int) {
        buffer = .allocate(byteCount: size, alignment: 4096)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { buffer.deallocate() }

    func bytes(at gpa: UInt64, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard GuestRange.isInside(gpa: gpa, count: count, ramSize: size), let base = buffer.baseAddress else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + Int(gpa), count: count)
    }

    func fill(_ byte: UInt8, at gpa: UInt64, count: Int) {
        bytes(at: gpa, count: count)?.initializeMemory(as: UInt8.self, repeating: byte)
    }

    func read(at gpa: UInt64, count: Int) -> [UInt8] { copyOut(from: gpa, count: count) ?? [] }
}

/// Records what a device does with its interrupt line.
final class LineRecorder: InterruptLine {
    private(set) var level = false
    private(set) var changes = 0
    func set(_ asserted: Bool) {
        if asserted != level { changes += 1 }
        level = asserted
    }
}

/// A segment of a request as the test driver describes it.
struct Seg {
    var gpa: UInt64
    var length: UInt32
    var writable: Bool
    static func r(_ gpa: UInt64, _ length: UInt32) -> Seg { Seg(gpa: gpa, length: length, writable: false) }
    static func w(_ gpa: UInt64, _ length: UInt32) -> Seg { Seg(gpa: gpa, length: length, writable: true) }
}

/// The driver half of a split virtqueue, laid out as Linux's virtio_ring does: descriptor table, avail ring and
/// used ring at fixed places in `ram`; descriptors handed out round-robin.
struct TestDriver {
    let ram: FakeRAM
    let size: UInt16
    let desc: UInt64
    let avail: UInt64
    let used: UInt64
    var nextDescriptor: UInt16 = 0
    var availIndex: UInt16 = 0

    init(ram: FakeRAM, size: UInt16, desc: UInt64 = 0x1000, avail: UInt64 = 0x3000, used: UInt64 = 0x4000) {
        self.ram = ram
        self.size = size
        self.desc = desc
        self.avail = avail
        self.used = used
    }

    func setDescriptor(_ index: UInt16, gpa: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64? = nil) {
        let at = (table ?? desc) + 16 * UInt64(index)
        ram.store(gpa, at: at)
        ram.store(length, at: at + 8)
        ram.store(flags, at: at + 12)
        ram.store(next, at: at + 14)
    }

    /// Writes `segments` as a chain of direct descriptors and returns the head (not yet published).
    mutating func writeChain(_ segments: [Seg]) -> UInt16 {
        let head = nextDescriptor
        for (i, s) in segments.enumerated() {
            let index = nextDescriptor
            nextDescriptor = (nextDescriptor + 1) % size
            let last = i == segments.count - 1
            let flags = (s.writable ? VirtqDescriptorFlag.write : 0) | (last ? 0 : VirtqDescriptorFlag.next)
            setDescriptor(index, gpa: s.gpa, length: s.length, flags: flags, next: last ? 0 : nextDescriptor)
        }
        return head
    }

    /// Writes `segments` as an indirect table at `table` and one direct descriptor pointing at it.
    mutating func writeIndirectChain(_ segments: [Seg], table: UInt64) -> UInt16 {
        for (i, s) in segments.enumerated() {
            let last = i == segments.count - 1
            let flags = (s.writable ? VirtqDescriptorFlag.write : 0) | (last ? 0 : VirtqDescriptorFlag.next)
            setDescriptor(UInt16(i), gpa: s.gpa, length: s.length, flags: flags, next: last ? 0 : UInt16(i + 1), table: table)
        }
        let head = nextDescriptor
        nextDescriptor = (nextDescriptor + 1) % size
        setDescriptor(head, gpa: table, length: UInt32(16 * segments.count), flags: VirtqDescriptorFlag.indirect)
        return head
    }

    /// Puts `head` in the next avail slot and publishes the new avail idx.
    mutating func publish(_ head: UInt16) {
        ram.store(head, at: avail + 4 + 2 * UInt64(availIndex % size))
        availIndex &+= 1
        ram.store(availIndex, at: avail + 2)
    }

    @discardableResult
    mutating func submit(_ segments: [Seg]) -> UInt16 {
        let head = writeChain(segments)
        publish(head)
        return head
    }

    func setAvailIndex(_ value: UInt16) { ram.store(value, at: avail + 2) }
    func setAvailFlags(_ value: UInt16) { ram.store(value, at: avail) }
    func setUsedEvent(_ value: UInt16) { ram.store(value, at: avail + 4 + 2 * UInt64(size)) }
    var usedIndex: UInt16 { ram.load(UInt16.self, at: used + 2) ?? 0xDEAD }
    var availEvent: UInt16 { ram.load(UInt16.self, at: used + 4 + 8 * UInt64(size)) ?? 0xDEAD }
    func usedElement(_ slot: UInt16) -> (id: UInt32, length: UInt32) {
        let at = used + 4 + 8 * UInt64(slot % size)
        return (ram.load(UInt32.self, at: at) ?? 0xDEAD, ram.load(UInt32.self, at: at + 4) ?? 0xDEAD)
    }

    /// A queue programmed with this driver's layout and activated.
    func activatedQueue(maxSize: UInt16? = nil, features: UInt64 = VirtioFeature.transportOffered) throws -> Virtqueue {
        var q = Virtqueue(maxSize: maxSize ?? size)
        q.size = size
        q.descriptorTable = desc
        q.availRing = avail
        q.usedRing = used
        q.ready = true
        try q.activate(features: features, memory: ram)
        return q
    }
}

/// Drives a `VirtioMMIOTransport` through the MMIO registers as the Linux virtio-mmio driver does.
struct MMIODriver {
    let transport: VirtioMMIOTransport
    typealias R = VirtioMMIORegister

    func r(_ offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: transport.read(offset: offset, size: 4)) }
    func w(_ offset: UInt64, _ value: UInt32) { transport.write(offset: offset, size: 4, value: UInt64(value)) }

    var deviceFeatures: UInt64 {
        w(R.deviceFeaturesSel, 1)
        let high = UInt64(r(R.deviceFeatures))
        w(R.deviceFeaturesSel, 0)
        return high << 32 | UInt64(r(R.deviceFeatures))
    }

    func writeDriverFeatures(_ features: UInt64) {
        w(R.driverFeaturesSel, 1)
        w(R.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        w(R.driverFeaturesSel, 0)
        w(R.driverFeatures, UInt32(truncatingIfNeeded: features))
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether the device kept FEATURES_OK.
    @discardableResult
    func negotiate(_ features: UInt64? = nil) -> Bool {
        w(R.status, 0)
        w(R.status, VirtioStatus.acknowledge)
        w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver)
        writeDriverFeatures(features ?? deviceFeatures)
        w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        return r(R.status) & VirtioStatus.featuresOK != 0
    }

    func setUpQueue(_ index: UInt32, _ d: TestDriver) {
        w(R.queueSel, index)
        w(R.queueNum, UInt32(d.size))
        w(R.queueDescLow, UInt32(truncatingIfNeeded: d.desc))
        w(R.queueDescHigh, UInt32(truncatingIfNeeded: d.desc >> 32))
        w(R.queueDriverLow, UInt32(truncatingIfNeeded: d.avail))
        w(R.queueDriverHigh, UInt32(truncatingIfNeeded: d.avail >> 32))
        w(R.queueDeviceLow, UInt32(truncatingIfNeeded: d.used))
        w(R.queueDeviceHigh, UInt32(truncatingIfNeeded: d.used >> 32))
        w(R.queueReady, 1)
    }

    func driverOK() {
        w(R.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
    }

    /// The whole bring-up with queue 0 as `d` lays it out.
    func bringUp(_ d: TestDriver, features: UInt64? = nil) {
        negotiate(features)
        setUpQueue(0, d)
        driverOK()
    }
}

/// A disk in memory, with failure injection and a log of the calls.
final class MemoryStorage: BlockStorage {
    var data: [UInt8]
    let isReadOnly: Bool
    var capacityBytes: UInt64 { UInt64(data.count) }
    var failNext = false
    private(set) var log: [String] = []

    init(bytes: Int, readOnly: Bool = false) {
        data = [UInt8](repeating: 0, count: bytes)
        isReadOnly = readOnly
    }

    private func check(_ offset: UInt64, _ length: Int) throws(BlockStorageError) {
        if failNext {
            failNext = false
            throw BlockStorageError(code: 5)
        }
        // VirtioBlock must never ask for bytes outside the disk.
        precondition(offset <= UInt64(data.count) && UInt64(length) <= UInt64(data.count) - offset, "storage range")
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        try check(offset, buffer.count)
        log.append("read \(offset) \(buffer.count)")
        data.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(offset) + buffer.count]))
        }
    }

    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        try check(offset, buffer.count)
        log.append("write \(offset) \(buffer.count)")
        data.replaceSubrange(Int(offset)..<Int(offset) + buffer.count, with: buffer)
    }

    func flush() throws(BlockStorageError) {
        try check(0, 0)
        log.append("flush")
    }

    func discard(offset: UInt64, length: UInt64) throws(BlockStorageError) {
        try check(offset, Int(length))
        log.append("discard \(offset) \(length)")
        for i in Int(offset)..<Int(offset + length) { data[i] = 0xDD }
    }

    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) throws(BlockStorageError) {
        try check(offset, Int(length))
        log.append("zeroes \(offset) \(length) \(unmap)")
        for i in Int(offset)..<Int(offset + length) { data[i] = 0 }
    }
}

/// Deterministic entropy: 1, 2, 3, ... with an optional cap on the bytes it will ever deliver.
final class CountingEntropy: EntropySource {
    var next: UInt8 = 1
    var remaining = Int.max
    func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, remaining)
        for i in 0..<n {
            buffer[i] = next
            next &+= 1
        }
        remaining -= n
        return n
    }
}

/// SplitMix64: a small seeded generator, so fuzz failures reproduce.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
