import Foundation
import Virtio
import XCTest

/// Storage for the fuzz run: no log (a million requests), and a hard check that no range VirtioBlock hands it
/// leaves the disk.
final class FuzzStorage: BlockStorage {
    let capacityBytes: UInt64
    let isReadOnly: Bool
    var violations = 0
    var operations = 0
    init(capacity: UInt64, readOnly: Bool) {
        capacityBytes = capacity
        isReadOnly = readOnly
    }
    private func check(_ offset: UInt64, _ length: UInt64) {
        operations += 1
        if !(offset <= capacityBytes && length <= capacityBytes - offset) { violations += 1 }
    }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        check(offset, UInt64(buffer.count))
        if let base = buffer.baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0x42, count: buffer.count) }
    }
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        check(offset, UInt64(buffer.count))
        if isReadOnly { violations += 1 }
    }
    func flush() throws(BlockStorageError) { operations += 1 }
    func discard(offset: UInt64, length: UInt64) throws(BlockStorageError) {
        check(offset, length)
        if isReadOnly { violations += 1 }
    }
    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) throws(BlockStorageError) {
        check(offset, length)
        if isReadOnly { violations += 1 }
    }
}

final class VirtioFuzzTests: XCTestCase {
    /// Random descriptor tables and avail rings, valid and hostile mixed, through `Virtqueue.nextRequest`, the
    /// block and entropy backends and the used ring. Seeded (VIRTIO_FUZZ_SEED) so a failure reproduces;
    /// VIRTIO_FUZZ_CASES scales it.
    func testRandomRingsNeverEscapeRAM() throws {
        let env = ProcessInfo.processInfo.environment
        let cases = env["VIRTIO_FUZZ_CASES"].flatMap { Int($0) } ?? 1_000_000
        let seed = env["VIRTIO_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_F00D
        var rng = SeededGenerator(seed: seed)
        let ramSize = 64 * 1024
        let ram = FakeRAM(size: ramSize)
        let end = UInt64(ramSize)
        guard let base = ram.buffer.baseAddress else { return XCTFail("no RAM") }
        // Fill RAM with noise once: indirect tables, headers and data come from it.
        for i in stride(from: 0, to: ramSize, by: 8) { base.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }

        let storage = FuzzStorage(capacity: 32 * 1024, readOnly: false)
        let readOnly = FuzzStorage(capacity: 32 * 1024 + 100, readOnly: true)
        let block = VirtioBlock(storage: storage, configuration: VirtioBlockConfiguration(queueSize: 16))
        let roBlock = VirtioBlock(storage: readOnly, configuration: VirtioBlockConfiguration(queueSize: 16))
        let entropy = VirtioEntropy(source: CountingEntropy(), queueSize: 16)
        let indirectArea: UInt64 = 0x8000 // 4 KiB of noise that random indirect tables point into often

        var chains = 0, errors = 0, escapes = 0, badOrder = 0, tooLong = 0, activationFailures = 0
        var errorKinds: [String: Int] = [:]
        var statuses: [UInt8: Int] = [:]
        let start = Date()

        for _ in 0..<cases {
            let size = UInt16(1) << UInt16(rng.next() % 8 == 0 ? 0 : 1 + rng.next() % 4)
            let n = UInt64(size)
            // Ring placement: usually a valid layout at a random aligned spot (sometimes flush with the end of RAM),
            // sometimes a random (mostly invalid) one.
            var q = Virtqueue(maxSize: 16)
            q.size = rng.next() % 16 == 0 ? UInt16(truncatingIfNeeded: rng.next()) : size
            switch rng.next() % 8 {
            case 0:
                q.descriptorTable = Self.nasty(&rng, end: end)
                q.availRing = Self.nasty(&rng, end: end)
                q.usedRing = Self.nasty(&rng, end: end)
            case 1:
                q.descriptorTable = end - 16 * n
                q.availRing = end - 16 * n - 0x100 - (6 + 2 * n) & ~1
                q.usedRing = (end - 16 * n - 0x200 - (6 + 8 * n)) & ~3
            default:
                let region = (rng.next() % 6) * 0x1000
                q.descriptorTable = region
                q.availRing = region + 0x200 + 2 * (rng.next() % 8)
                q.usedRing = region + 0x400 + 4 * (rng.next() % 8)
            }
            q.ready = true
            let features = rng.next() % 4 == 0 ? VirtioFeature.version1 : VirtioFeature.transportOffered
            do {
                try q.activate(features: features, memory: ram)
            } catch {
                activationFailures += 1
                continue
            }

            let wellFormed = rng.next() % 2 == 0
            if !wellFormed {
                Self.randomDescriptors(&rng, base: base, table: q.descriptorTable, count: n, end: end, indirectArea: indirectArea)
            } else {
                Self.wellFormedRequest(&rng, base: base, table: q.descriptorTable, count: n, end: end,
                                       indirectArea: indirectArea)
            }
            // Avail ring: a plausible or a wild index, heads mostly in range.
            let r = rng.next()
            let availIdx = r % 8 == 0 ? UInt16(truncatingIfNeeded: r >> 8)
                : wellFormed ? UInt16(1 + (r >> 8) % n) : UInt16((r >> 8) % (n + 1))
            base.storeBytes(of: availIdx.littleEndian, toByteOffset: Int(q.availRing + 2), as: UInt16.self)
            for i in 0..<n {
                let h = rng.next()
                let head = h % 16 == 0 ? UInt16(truncatingIfNeeded: h >> 8)
                    : wellFormed && h % 8 != 1 ? 0 : UInt16((h >> 8) % n)
                base.storeBytes(of: head.littleEndian, toByteOffset: Int(q.availRing + 4 + 2 * i), as: UInt16.self)
            }

            // Drain: at most size + 1 calls (more would be a bug: the index can cover at most size entries).
            for _ in 0...n {
                let chain: DescriptorChain?
                do {
                    chain = try q.nextRequest(in: ram)
                } catch {
                    errors += 1
                    errorKinds[Self.kind(error), default: 0] += 1
                    break
                }
                guard let chain else { break }
                chains += 1
                if chain.buffers.count > Int(q.size) { tooLong += 1 }
                var sawWritable = false
                for b in chain.buffers {
                    if !GuestRange.isInside(gpa: b.gpa, count: UInt64(b.length), ramSize: end) { escapes += 1 }
                    if b.isDeviceWritable { sawWritable = true } else if sawWritable { badOrder += 1 }
                }
                // Give half of the requests a plausible block header so the backends get past it.
                if let first = chain.buffers.first, !first.isDeviceWritable, first.length >= 16, rng.next() % 2 == 0 {
                    let h = rng.next()
                    let types: [UInt32] = [0, 1, 4, 8, 11, 13, 0, 1, UInt32(truncatingIfNeeded: h)]
                    ram.store(types[Int(h % UInt64(types.count))], at: first.gpa)
                    let sector = h >> 60 == 0 ? rng.next() : (h >> 8) % 80
                    ram.store(sector, at: first.gpa + 8)
                }
                let backend: VirtioDeviceBackend = switch rng.next() % 4 {
                case 0: roBlock
                case 1: entropy
                default: block
                }
                let used: UInt32
                do {
                    used = try backend.handle(chain, queue: 0, memory: ram)
                } catch {
                    continue
                }
                if backend !== entropy, let last = chain.buffers.last, last.length > 0 {
                    statuses[ram.load(UInt8.self, at: last.gpa + UInt64(last.length) - 1) ?? 9, default: 0] += 1
                }
                let writable = chain.writable.reduce(UInt64(0)) { $0 + UInt64($1.length) }
                if UInt64(used) > writable { escapes += 1 }
                do {
                    try q.addUsed(head: chain.head, length: used, in: ram)
                } catch {
                    escapes += 1 // the used ring was validated at activation
                }
            }
            _ = q.needsInterrupt(in: ram)
            _ = try? q.enableNotification(in: ram)
        }
        let elapsed = Date().timeIntervalSince(start)
        print("virtio fuzz: \(cases) cases (seed \(seed)) in \(String(format: "%.1f", elapsed)) s: \(chains) chains, "
              + "\(errors) hostile, \(activationFailures) refused layouts, \(storage.operations + readOnly.operations) "
              + "storage operations, block statuses \(statuses.sorted { $0.key < $1.key }.filter { $0.key < 3 }); errors by kind \(errorKinds.sorted { $0.key < $1.key })")
        XCTAssertEqual(escapes, 0, "buffers outside RAM or used lengths beyond the writable buffers")
        XCTAssertEqual(badOrder, 0)
        XCTAssertEqual(tooLong, 0)
        XCTAssertEqual(storage.violations + readOnly.violations, 0, "storage ranges outside the disk or writes to read-only")
        XCTAssertGreaterThan(chains, cases / 20, "the generator produces valid chains too")
        XCTAssertGreaterThan(errors, cases / 20, "and hostile ones")
    }

    /// Descriptors with random fields, biased towards the interesting values.
    static func randomDescriptors(_ rng: inout SeededGenerator, base: UnsafeMutableRawPointer, table: UInt64, count n: UInt64,
                                  end: UInt64, indirectArea: UInt64) {
        for i in 0..<n {
            let r = rng.next()
            let addr: UInt64
            switch r % 8 {
            case 0: addr = nasty(&rng, end: end)
            case 1, 2: addr = indirectArea + 16 * (rng.next() % 256)
            default: addr = rng.next() % end
            }
            let len: UInt32
            switch (r >> 8) % 8 {
            case 0: len = UInt32(truncatingIfNeeded: rng.next())
            case 1: len = 16 * UInt32(rng.next() % 20)
            case 2: len = UInt32.max - UInt32(rng.next() % 4)
            default: len = UInt32(rng.next() % 1100)
            }
            var flags = UInt16(truncatingIfNeeded: r >> 16) & 0x7
            if (r >> 24) % 4 == 0 { flags &= ~VirtqDescriptorFlag.indirect }
            if (r >> 26) % 32 == 0 { flags |= UInt16(truncatingIfNeeded: r >> 32) } // junk flag bits
            let next = (r >> 40) % 16 == 0 ? UInt16(truncatingIfNeeded: r >> 48) : UInt16((r >> 48) % n)
            storeDescriptor(base, at: table + 16 * i, addr: addr, len: len, flags: flags, next: next)
        }
    }

    /// A block request as a driver would build it (header, data, status; direct or through an indirect table),
    /// sometimes with one field corrupted, starting at descriptor 0.
    static func wellFormedRequest(_ rng: inout SeededGenerator, base: UnsafeMutableRawPointer, table: UInt64,
                                  count n: UInt64, end: UInt64, indirectArea: UInt64) {
        let types: [UInt32] = [0, 0, 0, 1, 1, 1, 4, 8, 11, 13, 99]
        let type = types[Int(rng.next() % UInt64(types.count))]
        let deviceWrites = type == 0 || type == 8
        var segments: [(addr: UInt64, len: UInt32, writable: Bool)] = []
        let headerAt = rng.next() % (end - 16)
        base.storeBytes(of: type.littleEndian, toByteOffset: Int(headerAt), as: UInt32.self)
        let sector = rng.next() % 16 == 0 ? rng.next() : rng.next() % 70
        base.storeBytes(of: sector.littleEndian, toByteOffset: Int(headerAt + 8), as: UInt64.self)
        segments.append((headerAt, 16, false))
        for _ in 0..<(rng.next() % 4 == 0 ? 0 : 1 + rng.next() % 2) {
            let len = rng.next() % 4 == 0 ? UInt32(rng.next() % 600) : 512 * UInt32(1 + rng.next() % 4)
            if type == 11 || type == 13 {
                // A discard / write-zeroes segment list: sector, count, flags.
                let at = rng.next() % (end - 16)
                base.storeBytes(of: (rng.next() % 70).littleEndian, toByteOffset: Int(at), as: UInt64.self)
                base.storeBytes(of: UInt32(rng.next() % 8).littleEndian, toByteOffset: Int(at + 8), as: UInt32.self)
                base.storeBytes(of: UInt32(rng.next() % 3).littleEndian, toByteOffset: Int(at + 12), as: UInt32.self)
                segments.append((at, 16, false))
            } else {
                segments.append((rng.next() % (end - UInt64(len)), len, deviceWrites))
            }
        }
        segments.append((rng.next() % (end - 2), UInt32(1 + rng.next() % 2), true))
        if rng.next() % 4 == 0, !segments.isEmpty {
            // Corrupt one thing: an address, a length or a direction.
            let i = Int(rng.next() % UInt64(segments.count))
            switch rng.next() % 3 {
            case 0: segments[i].addr = nasty(&rng, end: end)
            case 1: segments[i].len = UInt32(truncatingIfNeeded: rng.next() >> UInt64(rng.next() % 64))
            default: segments[i].writable.toggle()
            }
        }
        let indirect = rng.next() % 4 == 0
        let limit = indirect ? UInt64(segments.count) : n
        guard UInt64(segments.count) <= limit else {
            // Too long for this queue: let it loop round the table (a chain-too-long case).
            for i in 0..<n {
                let s = segments[Int(i)]
                storeDescriptor(base, at: table + 16 * i, addr: s.addr, len: s.len,
                                flags: VirtqDescriptorFlag.next | (s.writable ? VirtqDescriptorFlag.write : 0),
                                next: UInt16((i + 1) % n))
            }
            return
        }
        let where_ = indirect ? indirectArea : table
        for (i, s) in segments.enumerated() {
            let last = i == segments.count - 1
            storeDescriptor(base, at: where_ + 16 * UInt64(i), addr: s.addr, len: s.len,
                            flags: (last ? 0 : VirtqDescriptorFlag.next) | (s.writable ? VirtqDescriptorFlag.write : 0),
                            next: last ? 0 : UInt16(i + 1))
        }
        if indirect {
            storeDescriptor(base, at: table, addr: indirectArea, len: UInt32(16 * segments.count),
                            flags: VirtqDescriptorFlag.indirect, next: 0)
        }
    }

    static func storeDescriptor(_ base: UnsafeMutableRawPointer, at gpa: UInt64, addr: UInt64, len: UInt32, flags: UInt16,
                                next: UInt16) {
        let at = Int(gpa)
        base.storeBytes(of: addr.littleEndian, toByteOffset: at, as: UInt64.self)
        base.storeBytes(of: len.littleEndian, toByteOffset: at + 8, as: UInt32.self)
        base.storeBytes(of: flags.littleEndian, toByteOffset: at + 12, as: UInt16.self)
        base.storeBytes(of: next.littleEndian, toByteOffset: at + 14, as: UInt16.self)
    }

    /// An address near the end of RAM, near 2^64, or anywhere.
    static func nasty(_ rng: inout SeededGenerator, end: UInt64) -> UInt64 {
        switch rng.next() % 3 {
        case 0: end &- rng.next() % 64
        case 1: UInt64.max &- rng.next() % 64
        default: rng.next()
        }
    }

    /// The case name of an error, for the summary.
    static func kind(_ error: VirtqueueError) -> String {
        Mirror(reflecting: error).children.first?.label ?? String(describing: error)
    }
}

final class VirtioMMIOFuzzTests: XCTestCase {
    /// Random MMIO accesses (biased to real registers and plausible values) and notifications against a block
    /// device over noisy RAM: whatever the order, nothing traps, the interrupt line always equals
    /// InterruptStatus != 0, and once DEVICE_NEEDS_RESET is set only a reset clears it.
    func testRandomRegisterAccessesKeepInvariants() {
        let steps = (ProcessInfo.processInfo.environment["VIRTIO_FUZZ_CASES"].flatMap { Int($0) } ?? 1_000_000) / 5
        var rng = SeededGenerator(seed: 0xC0FFEE)
        let ram = FakeRAM(size: 64 * 1024)
        guard let base = ram.buffer.baseAddress else { return XCTFail("no RAM") }
        for i in stride(from: 0, to: ram.buffer.count, by: 8) {
            base.storeBytes(of: rng.next() & 0x0000_FFFF_0000_FFFF, toByteOffset: i, as: UInt64.self)
        }
        let storage = FuzzStorage(capacity: 16 * 1024, readOnly: false)
        let line = LineRecorder()
        let transport = VirtioMMIOTransport(backend: VirtioBlock(storage: storage,
                                                                 configuration: VirtioBlockConfiguration(queueSize: 8)),
                                            memory: ram, interrupt: line)
        typealias R = VirtioMMIORegister
        let registers = [R.status, R.status, R.status, R.queueSel, R.queueNum, R.queueReady, R.queueNotify, R.interruptACK,
                         R.queueDescLow, R.queueDriverLow, R.queueDeviceLow, R.queueDescHigh, R.driverFeatures,
                         R.driverFeaturesSel, R.deviceFeaturesSel, R.shmSel, R.queueReset, R.config, R.config + 34]
        let statuses: [UInt32] = [0, 1, 3, 11, 15, 0x8F, 0x4F, 7, 0xFF]
        var violations = 0, live = 0, needsReset = 0
        for _ in 0..<steps {
            let r = rng.next()
            let offset = r % 8 == 0 ? (r >> 8) % 0x200 : registers[Int((r >> 8) % UInt64(registers.count))]
            let size = r % 16 == 1 ? Int((r >> 20) % 9) : 4
            var value = rng.next()
            switch offset {
            case R.status: value = UInt64(statuses[Int(value % UInt64(statuses.count))])
            case R.queueNum: value = value % 4 == 0 ? value : 1 << (value % 5)
            case R.queueDescLow, R.queueDriverLow, R.queueDeviceLow: value = value % 4 == 0 ? value : (value % 0x10) * 0x1000
            case R.queueDescHigh: value = value % 8 == 0 ? value : 0
            case R.driverFeatures: value = value % 2 == 0 ? value : 1 // VERSION_1 in the high half
            case R.queueSel, R.driverFeaturesSel, R.queueNotify: value %= 3
            default: break
            }
            let needsResetBefore = transport.state.status & VirtioStatus.deviceNeedsReset != 0
            let scripted = r % 97 == 0
            if scripted {
                // A scripted bring-up with a plausible layout, then a request in it, so the live paths get traffic.
                let mmio = MMIODriver(transport: transport)
                mmio.negotiate(VirtioFeature.version1 | (value % 2 == 0 ? transport.offeredFeatures : 0))
                let page = (value >> 8) % 12 * 0x1000
                let d = TestDriver(ram: ram, size: UInt16(1) << ((value >> 16) % 4), desc: page, avail: page + 0x200,
                                   used: page + 0x400 + (value >> 24) % 2 * 2)
                ram.fill(0, at: d.avail, count: 0x400)
                mmio.setUpQueue(0, d)
                mmio.driverOK()
                VirtioFuzzTests.wellFormedRequest(&rng, base: base, table: d.desc, count: UInt64(d.size),
                                                  end: ram.size, indirectArea: 0xC000)
                d.setAvailIndex(UInt16(1 + (value >> 32) % UInt64(d.size)))
            } else if r % 5 == 0 {
                _ = transport.read(offset: offset, size: size)
            } else if r % 7 == 0 {
                transport.queueNotified(Int(value % 2))
            } else {
                transport.write(offset: offset, size: size, value: value)
            }
            if line.level != (transport.state.interruptStatus != 0) { violations += 1 }
            let needsResetAfter = transport.state.status & VirtioStatus.deviceNeedsReset != 0
            if needsResetBefore && !needsResetAfter && transport.state.status != 0 && !scripted { violations += 1 }
            if transport.isLive { live += 1 }
            if needsResetAfter && !needsResetBefore { needsReset += 1 }
        }
        print("virtio MMIO fuzz: \(steps) accesses, \(live) while live, \(needsReset) times NEEDS_RESET, "
              + "\(storage.operations) storage operations, \(line.changes) line changes")
        XCTAssertEqual(violations, 0)
        XCTAssertEqual(storage.violations, 0)
    }
}
