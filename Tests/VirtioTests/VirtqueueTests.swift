import Virtio
import XCTest

final class GuestRAMTests: XCTestCase {
    func testRangeChecksAreOverflowSafe() {
        XCTAssertTrue(GuestRange.isInside(gpa: 0, count: UInt64(4096), ramSize: 4096))
        XCTAssertTrue(GuestRange.isInside(gpa: 4096, count: UInt64(0), ramSize: 4096))
        XCTAssertFalse(GuestRange.isInside(gpa: 4097, count: UInt64(0), ramSize: 4096))
        XCTAssertFalse(GuestRange.isInside(gpa: 4095, count: UInt64(2), ramSize: 4096))
        XCTAssertFalse(GuestRange.isInside(gpa: .max, count: UInt64(2), ramSize: 4096))
        XCTAssertFalse(GuestRange.isInside(gpa: 16, count: UInt64.max - 8, ramSize: 4096))
        XCTAssertFalse(GuestRange.isInside(gpa: 0, count: -1, ramSize: 4096))
    }

    func testMappedGuestRAMChecksBounds() throws {
        let backing = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 16)
        defer { backing.deallocate() }
        let base = try XCTUnwrap(backing.baseAddress)
        let ram = MappedGuestRAM(base: base, size: 256)
        XCTAssertEqual(ram.size, 256)
        XCTAssertTrue(ram.store(UInt16(0xBEEF), at: 254))
        XCTAssertEqual(backing[254], 0xEF)
        XCTAssertNil(ram.bytes(at: 255, count: 2))
        XCTAssertNil(ram.bytes(at: .max, count: 1))
        XCTAssertNil(ram.bytes(at: 0, count: -1))
        XCTAssertEqual(ram.bytes(at: 256, count: 0)?.count, 0)
    }

    func testLittleEndianLoadsAndStores() {
        let ram = FakeRAM(size: 64)
        XCTAssertTrue(ram.store(UInt32(0x1122_3344), at: 3))
        XCTAssertEqual(ram.read(at: 3, count: 4), [0x44, 0x33, 0x22, 0x11])
        XCTAssertEqual(ram.load(UInt16.self, at: 4), 0x2233)
        XCTAssertTrue(ram.store(UInt64.max, at: 56))
        XCTAssertFalse(ram.store(UInt64.max, at: 57))
        XCTAssertNil(ram.load(UInt64.self, at: 60))
        XCTAssertNil(ram.load(UInt8.self, at: .max))
        XCTAssertTrue(ram.copyIn([1, 2, 3], to: 61))
        XCTAssertFalse(ram.copyIn([1, 2, 3, 4], to: 61))
        XCTAssertEqual(ram.copyOut(from: 61, count: 3), [1, 2, 3])
        XCTAssertNil(ram.copyOut(from: 62, count: 3))
    }
}

final class VirtqueueTests: XCTestCase {
    let ram = FakeRAM(size: 1 << 20)

    func testActivationValidatesSizeAlignmentAndPlacement() throws {
        var q = Virtqueue(maxSize: 16)
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) { XCTAssertEqual($0 as? VirtqueueError, .notReady) }
        q.ready = true
        q.descriptorTable = 0x1000
        q.availRing = 0x2000
        q.usedRing = 0x3000
        for bad: UInt16 in [0, 3, 12, 32] {
            q.size = bad
            XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
                XCTAssertEqual($0 as? VirtqueueError, .invalidSize(bad, max: 16))
            }
        }
        q.size = 8
        try q.activate(features: 0, memory: ram)
        XCTAssertTrue(q.isActive)
        q.descriptorTable = 0x1008
        XCTAssertFalse(q.isActive, "changing a register deactivates")
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.descriptorTable, gpa: 0x1008))
        }
        q.descriptorTable = UInt64(1 << 20) - 16 * 8 + 16 // runs past the end of RAM
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.descriptorTable, gpa: UInt64(1 << 20) - 16 * 7))
        }
        q.descriptorTable = 0x1000
        q.availRing = 0x2001
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.availRing, gpa: 0x2001))
        }
        q.availRing = UInt64(1 << 20) - 6 - 2 * 8 + 2
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.availRing, gpa: UInt64(1 << 20) - 20))
        }
        q.availRing = UInt64(1 << 20) - 6 - 2 * 8 // exactly fits, including used_event
        q.usedRing = 0x3002
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.usedRing, gpa: 0x3002))
        }
        q.usedRing = UInt64.max - 3
        XCTAssertThrowsError(try q.activate(features: 0, memory: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .invalidRing(.usedRing, gpa: UInt64.max - 3))
        }
        q.usedRing = 0x3000
        try q.activate(features: 0, memory: ram)
        XCTAssertFalse(q.eventIndexEnabled)
        XCTAssertFalse(q.indirectEnabled)
    }

    func testNothingAvailableReturnsNil() throws {
        let d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        XCTAssertNil(try q.nextRequest(in: ram))
        var inactive = Virtqueue(maxSize: 8)
        XCTAssertThrowsError(try inactive.nextRequest(in: ram)) { XCTAssertEqual($0 as? VirtqueueError, .notReady) }
    }

    func testChainRoundTripAndUsedRing() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        let head = d.submit([.r(0x10000, 16), .r(0x11000, 512), .w(0x12000, 512), .w(0x13000, 1)])
        let chain = try XCTUnwrap(q.nextRequest(in: ram))
        XCTAssertEqual(chain.head, head)
        XCTAssertEqual(chain.buffers, [
            DescriptorBuffer(gpa: 0x10000, length: 16, isDeviceWritable: false),
            DescriptorBuffer(gpa: 0x11000, length: 512, isDeviceWritable: false),
            DescriptorBuffer(gpa: 0x12000, length: 512, isDeviceWritable: true),
            DescriptorBuffer(gpa: 0x13000, length: 1, isDeviceWritable: true),
        ])
        XCTAssertEqual(chain.readable.count, 2)
        XCTAssertEqual(chain.writable.count, 2)
        XCTAssertNil(try q.nextRequest(in: ram))
        try q.addUsed(head: chain.head, length: 513, in: ram)
        XCTAssertEqual(d.usedIndex, 1)
        XCTAssertEqual(d.usedElement(0).id, UInt32(head))
        XCTAssertEqual(d.usedElement(0).length, 513)
        XCTAssertThrowsError(try q.addUsed(head: 8, length: 0, in: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .usedHeadOutOfRange(8))
        }
    }

    func testRingIndicesWrapAround() throws {
        var d = TestDriver(ram: ram, size: 4)
        var q = try d.activatedQueue()
        for i in 0..<70_000 {
            let head = d.submit([.w(0x10000, UInt32(i % 100 + 1))])
            let chain = try XCTUnwrap(q.nextRequest(in: ram))
            XCTAssertEqual(chain.head, head)
            try q.addUsed(head: head, length: 1, in: ram)
        }
        XCTAssertEqual(d.usedIndex, UInt16(truncatingIfNeeded: 70_000))
        XCTAssertEqual(q.lastAvailIndex, UInt16(truncatingIfNeeded: 70_000))
    }

    func testIndirectTableIsFlattened() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        d.submit([.r(0x10000, 16)])
        let head = d.writeIndirectChain([.r(0x20000, 16), .w(0x21000, 100), .w(0x22000, 1)], table: 0x8000)
        d.publish(head)
        _ = try q.nextRequest(in: ram)
        let chain = try XCTUnwrap(q.nextRequest(in: ram))
        XCTAssertEqual(chain.head, head)
        XCTAssertEqual(chain.buffers.map(\.gpa), [0x20000, 0x21000, 0x22000])
        XCTAssertEqual(chain.buffers.map(\.isDeviceWritable), [false, true, true])
    }

    func testDirectDescriptorsBeforeAnIndirectOneAreKept() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        d.setDescriptor(0, gpa: 0x10000, length: 16, flags: VirtqDescriptorFlag.next, next: 5)
        d.setDescriptor(5, gpa: 0x8000, length: 32, flags: VirtqDescriptorFlag.indirect)
        d.setDescriptor(0, gpa: 0x11000, length: 8, flags: VirtqDescriptorFlag.next, next: 1, table: 0x8000)
        d.setDescriptor(1, gpa: 0x12000, length: 1, flags: VirtqDescriptorFlag.write, table: 0x8000)
        d.publish(0)
        let chain = try XCTUnwrap(q.nextRequest(in: ram))
        XCTAssertEqual(chain.buffers.map(\.gpa), [0x10000, 0x11000, 0x12000])
    }

    /// Submits one crafted chain (head 0) and returns what `nextRequest` throws.
    private func hostile(size: UInt16 = 8, features: UInt64 = VirtioFeature.transportOffered,
                         _ build: (TestDriver) -> Void) throws -> VirtqueueError? {
        var d = TestDriver(ram: ram, size: size)
        var q = try d.activatedQueue(features: features)
        build(d)
        d.publish(0)
        do {
            _ = try q.nextRequest(in: ram)
            return nil
        } catch {
            return error
        }
    }

    func testHostileDescriptorIndex() throws {
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 8)
        }, .descriptorIndexOutOfRange(8, tableSize: 8))
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        d.publish(200) // the head itself
        XCTAssertThrowsError(try q.nextRequest(in: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .descriptorIndexOutOfRange(200, tableSize: 8))
        }
    }

    func testHostileLoop() throws {
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 1)
            d.setDescriptor(1, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 0)
        }, .chainTooLong(limit: 8))
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 0)
        }, .chainTooLong(limit: 8))
    }

    func testChainLongerThanQueueSizeViaIndirectTable() throws {
        XCTAssertEqual(try hostile(size: 4) { d in
            for i in 0..<5 {
                d.setDescriptor(UInt16(i), gpa: 0x10000, length: 1, flags: i < 4 ? VirtqDescriptorFlag.next : 0,
                                next: UInt16(i + 1), table: 0x8000)
            }
            d.setDescriptor(0, gpa: 0x8000, length: 80, flags: VirtqDescriptorFlag.indirect)
        }, .chainTooLong(limit: 4))
        XCTAssertEqual(try hostile(size: 8) { d in // a loop inside the indirect table
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 1, table: 0x8000)
            d.setDescriptor(1, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 0, table: 0x8000)
            d.setDescriptor(0, gpa: 0x8000, length: 32, flags: VirtqDescriptorFlag.indirect)
        }, .chainTooLong(limit: 8))
        XCTAssertEqual(try hostile(size: 8) { d in // next beyond the indirect table
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.next, next: 2, table: 0x8000)
            d.setDescriptor(0, gpa: 0x8000, length: 32, flags: VirtqDescriptorFlag.indirect)
        }, .descriptorIndexOutOfRange(2, tableSize: 2))
    }

    func testHostileIndirectDescriptors() throws {
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x8000, length: 16, flags: VirtqDescriptorFlag.indirect, table: 0x8000)
            d.setDescriptor(0, gpa: 0x8000, length: 16, flags: VirtqDescriptorFlag.indirect)
        }, .nestedIndirect)
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x8000, length: 16, flags: VirtqDescriptorFlag.indirect | VirtqDescriptorFlag.next, next: 1)
        }, .indirectWithNext)
        for length: UInt32 in [0, 15, 24] {
            XCTAssertEqual(try hostile { d in
                d.setDescriptor(0, gpa: 0x8000, length: length, flags: VirtqDescriptorFlag.indirect)
            }, .indirectTableLength(length))
        }
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: UInt64(1 << 20) - 16, length: 32, flags: VirtqDescriptorFlag.indirect)
        }, .indirectTableOutsideRAM(gpa: UInt64(1 << 20) - 16, length: 32))
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: UInt64.max - 15, length: 32, flags: VirtqDescriptorFlag.indirect)
        }, .indirectTableOutsideRAM(gpa: UInt64.max - 15, length: 32))
        XCTAssertEqual(try hostile(features: VirtioFeature.version1) { d in
            d.setDescriptor(0, gpa: 0x8000, length: 16, flags: VirtqDescriptorFlag.indirect)
        }, .indirectNotNegotiated)
    }

    func testHostileBuffers() throws {
        let end = UInt64(1 << 20)
        XCTAssertEqual(try hostile { d in d.setDescriptor(0, gpa: end - 4, length: 5, flags: 0) },
                       .bufferOutsideRAM(gpa: end - 4, length: 5))
        XCTAssertEqual(try hostile { d in d.setDescriptor(0, gpa: end + 1, length: 0, flags: 0) },
                       .bufferOutsideRAM(gpa: end + 1, length: 0))
        XCTAssertEqual(try hostile { d in d.setDescriptor(0, gpa: .max, length: 2, flags: VirtqDescriptorFlag.write) },
                       .bufferOutsideRAM(gpa: .max, length: 2))
        XCTAssertEqual(try hostile { d in d.setDescriptor(0, gpa: 0x10, length: .max, flags: 0) },
                       .bufferOutsideRAM(gpa: 0x10, length: .max))
        XCTAssertNil(try hostile { d in d.setDescriptor(0, gpa: end - 4, length: 4, flags: 0) }, "the last bytes are fine")
    }

    func testReadableAfterWritable() throws {
        XCTAssertEqual(try hostile { d in
            d.setDescriptor(0, gpa: 0x10000, length: 1, flags: VirtqDescriptorFlag.write | VirtqDescriptorFlag.next, next: 1)
            d.setDescriptor(1, gpa: 0x10000, length: 1, flags: 0)
        }, .readableAfterWritable)
    }

    func testAvailIndexJump() throws {
        let d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        d.setAvailIndex(9)
        XCTAssertThrowsError(try q.nextRequest(in: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .availIndexJumped(availIndex: 9, lastSeen: 0))
        }
        d.setAvailIndex(0xFFFF) // "behind" us is also more than the size ahead
        XCTAssertThrowsError(try q.nextRequest(in: ram)) {
            XCTAssertEqual($0 as? VirtqueueError, .availIndexJumped(availIndex: 0xFFFF, lastSeen: 0))
        }
        d.setAvailIndex(8) // exactly a full ring is fine
        XCTAssertNotNil(try q.nextRequest(in: ram))
    }

    func testInterruptSuppressionWithoutEventIndex() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue(features: VirtioFeature.version1)
        XCTAssertFalse(q.needsInterrupt(in: ram), "nothing used yet")
        d.submit([.w(0x10000, 4)])
        try q.addUsed(head: try XCTUnwrap(q.nextRequest(in: ram)).head, length: 4, in: ram)
        XCTAssertTrue(q.needsInterrupt(in: ram))
        XCTAssertFalse(q.needsInterrupt(in: ram), "already decided for this batch")
        d.setAvailFlags(VirtqAvailFlag.noInterrupt)
        d.submit([.w(0x10000, 4)])
        try q.addUsed(head: try XCTUnwrap(q.nextRequest(in: ram)).head, length: 4, in: ram)
        XCTAssertFalse(q.needsInterrupt(in: ram))
        // Without EVENT_IDX the avail_event word is left alone.
        ram.store(UInt16(0x5555), at: d.used + 4 + 8 * 8)
        XCTAssertFalse(try q.enableNotification(in: ram))
        XCTAssertEqual(d.availEvent, 0x5555)
    }

    func testEventIndexSuppression() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        XCTAssertTrue(q.eventIndexEnabled)
        d.setAvailFlags(VirtqAvailFlag.noInterrupt) // ignored with EVENT_IDX
        func complete(_ n: Int) throws {
            for _ in 0..<n { d.submit([.w(0x10000, 4)]) }
            for _ in 0..<n { try q.addUsed(head: try XCTUnwrap(q.nextRequest(in: ram)).head, length: 4, in: ram) }
        }
        d.setUsedEvent(0) // interrupt when used idx passes 0 -> 1
        try complete(1)
        XCTAssertTrue(q.needsInterrupt(in: ram))
        d.setUsedEvent(2) // interrupt only once used idx goes past 2 (i.e. reaches 3)
        try complete(1) // idx 2
        XCTAssertFalse(q.needsInterrupt(in: ram))
        try complete(1) // idx 3: crossed used_event = 2
        XCTAssertTrue(q.needsInterrupt(in: ram))
        d.setUsedEvent(4)
        try complete(3) // 3 -> 6 in one batch crosses 4
        XCTAssertTrue(q.needsInterrupt(in: ram))
        d.setUsedEvent(3) // stale event behind us: no interrupt
        try complete(1)
        XCTAssertFalse(q.needsInterrupt(in: ram))
        // Wrap-around: old and new straddle 0xFFFF -> 0.
        var w = TestDriver(ram: ram, size: 8, desc: 0x40000, avail: 0x42000, used: 0x43000)
        var wq = try w.activatedQueue()
        for _ in 0..<0xFFFE {
            w.submit([.w(0x10000, 1)])
            try wq.addUsed(head: try XCTUnwrap(wq.nextRequest(in: ram)).head, length: 1, in: ram)
        }
        w.setUsedEvent(0xFFFF)
        XCTAssertFalse(wq.needsInterrupt(in: ram))
        w.submit([.w(0x10000, 1)])
        w.submit([.w(0x10000, 1)])
        for _ in 0..<2 { try wq.addUsed(head: try XCTUnwrap(wq.nextRequest(in: ram)).head, length: 1, in: ram) }
        XCTAssertEqual(w.usedIndex, 0)
        XCTAssertTrue(wq.needsInterrupt(in: ram))
    }

    func testAvailEventAndEnableNotification() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        try q.setAvailEvent(7, in: ram)
        XCTAssertEqual(d.availEvent, 7)
        d.submit([.w(0x10000, 4)])
        d.submit([.w(0x10000, 4)])
        _ = try q.nextRequest(in: ram)
        XCTAssertTrue(try q.enableNotification(in: ram), "one is still available")
        XCTAssertEqual(d.availEvent, 1)
        _ = try q.nextRequest(in: ram)
        XCTAssertFalse(try q.enableNotification(in: ram))
        XCTAssertEqual(d.availEvent, 2)
    }

    func testStateIsCodableForRestart() throws {
        var d = TestDriver(ram: ram, size: 8)
        var q = try d.activatedQueue()
        d.submit([.w(0x10000, 4)])
        d.submit([.w(0x10000, 4)])
        try q.addUsed(head: try XCTUnwrap(q.nextRequest(in: ram)).head, length: 4, in: ram)
        var restored = try JSONDecoder().decode(Virtqueue.self, from: JSONEncoder().encode(q))
        XCTAssertEqual(restored, q)
        XCTAssertEqual(try restored.nextRequest(in: ram)?.head, 1, "resumes with the second request")
    }
}
