import Virtio
import XCTest

final class VirtioBlockTests: XCTestCase {
    typealias R = VirtioMMIORegister
    let ram = FakeRAM(size: 1 << 20)
    let line = LineRecorder()
    let header: UInt64 = 0x10000
    let dataAt: UInt64 = 0x20000
    let statusAt: UInt64 = 0x30000

    struct Device {
        let storage: MemoryStorage
        let block: VirtioBlock
        let transport: VirtioMMIOTransport
        var driver: TestDriver
    }

    func makeDevice(bytes: Int = 64 * 512, readOnly: Bool = false,
                    configuration: VirtioBlockConfiguration = VirtioBlockConfiguration(driveID: "disk-0", queueSize: 16))
        -> Device {
        let storage = MemoryStorage(bytes: bytes, readOnly: readOnly)
        for i in storage.data.indices { storage.data[i] = UInt8(truncatingIfNeeded: i / 512) }
        let block = VirtioBlock(storage: storage, configuration: configuration)
        let transport = VirtioMMIOTransport(backend: block, memory: ram, interrupt: line)
        let driver = TestDriver(ram: ram, size: 16)
        ram.fill(0, at: driver.desc, count: Int(driver.used - driver.desc) + 0x1000) // a fresh driver's rings
        MMIODriver(transport: transport).bringUp(driver)
        return Device(storage: storage, block: block, transport: transport, driver: driver)
    }

    func writeHeader(type: UInt32, sector: UInt64, at gpa: UInt64? = nil) {
        ram.store(type, at: gpa ?? header)
        ram.store(UInt32(0), at: (gpa ?? header) + 4)
        ram.store(sector, at: (gpa ?? header) + 8)
    }

    /// Submits `segments`, notifies, and returns (status byte, used length).
    func run(_ device: inout Device, _ segments: [Seg]) -> (status: UInt8, used: UInt32) {
        ram.store(UInt8(0xEE), at: statusAt)
        let before = device.driver.usedIndex
        device.driver.submit(segments)
        device.transport.queueNotified(0)
        XCTAssertEqual(device.driver.usedIndex, before &+ 1, "one request completed")
        return (ram.load(UInt8.self, at: statusAt) ?? 0xFF, device.driver.usedElement(before).length)
    }

    func testFeaturesAndConfigSpace() {
        var config = VirtioBlockConfiguration(driveID: "x", queueSize: 64, blockSize: 4096)
        config.maxDiscardSegments = 3
        let rw = VirtioBlock(storage: MemoryStorage(bytes: 10 * 512 + 100), configuration: config)
        XCTAssertEqual(rw.deviceID, 2)
        XCTAssertEqual(rw.queueMaxSizes, [64])
        let expected = VirtioBlockFeature.segMax | VirtioBlockFeature.blockSize | VirtioBlockFeature.flush
            | VirtioBlockFeature.discard | VirtioBlockFeature.writeZeroes
        XCTAssertEqual(rw.deviceFeatures, expected)
        XCTAssertEqual(rw.readConfig(offset: 0, size: 8), 10, "capacity in whole 512-byte sectors")
        XCTAssertEqual(rw.readConfig(offset: 12, size: 4), 62, "seg_max")
        XCTAssertEqual(rw.readConfig(offset: 20, size: 4), 4096, "blk_size")
        XCTAssertEqual(rw.readConfig(offset: 32, size: 1), 1, "writeback")
        XCTAssertEqual(rw.readConfig(offset: 34, size: 2), 1, "num_queues")
        XCTAssertEqual(rw.readConfig(offset: 36, size: 4), 0x3F_FFFF, "max_discard_sectors")
        XCTAssertEqual(rw.readConfig(offset: 40, size: 4), 3, "max_discard_seg")
        XCTAssertEqual(rw.readConfig(offset: 44, size: 4), 1, "discard_sector_alignment")
        XCTAssertEqual(rw.readConfig(offset: 48, size: 4), 0x3F_FFFF, "max_write_zeroes_sectors")
        XCTAssertEqual(rw.readConfig(offset: 52, size: 4), 32, "max_write_zeroes_seg")
        XCTAssertEqual(rw.readConfig(offset: 56, size: 1), 1, "write_zeroes_may_unmap")
        XCTAssertEqual(rw.readConfig(offset: 96, size: 8), 0)
        XCTAssertEqual(rw.readConfig(offset: .max, size: 8), 0)
        XCTAssertFalse(rw.writeConfig(offset: 32, size: 1, value: 0))

        let ro = VirtioBlock(storage: MemoryStorage(bytes: 512, readOnly: true),
                             configuration: VirtioBlockConfiguration(cacheType: .unsafe))
        XCTAssertEqual(ro.deviceFeatures, VirtioBlockFeature.segMax | VirtioBlockFeature.blockSize | VirtioBlockFeature.readOnly)
        XCTAssertEqual(ro.readConfig(offset: 32, size: 1), 0)
        // Through the transport: config space at 0x100.
        let t = VirtioMMIOTransport(backend: rw, memory: ram, interrupt: line)
        XCTAssertEqual(t.read(offset: R.config, size: 4), 10)
        XCTAssertEqual(t.read(offset: R.deviceID, size: 4), 2)
    }

    func testReplacedStorageGivesTheNewCapacityAndItsSectors() {
        let disk = VirtioBlock(storage: MemoryStorage(bytes: 8 * 512))
        XCTAssertEqual(disk.readConfig(offset: 0, size: 8), 8)
        let bigger = MemoryStorage(bytes: 128 * 512 + 7)
        XCTAssertTrue(disk.replaceStorage(bigger))
        XCTAssertEqual(disk.readConfig(offset: 0, size: 8), 128, "whole sectors of the new file")
        XCTAssertTrue(disk.storage === bigger)
        XCTAssertFalse(disk.replaceStorage(MemoryStorage(bytes: 512, readOnly: true)),
                       "a read-only file under a driver that negotiated a writable disk is refused")
        XCTAssertEqual(disk.readConfig(offset: 0, size: 8), 128)
    }

    func testReadWriteRoundTrip() {
        var dev = makeDevice()
        // Write two sectors from two buffers at sector 5.
        for i in 0..<1024 { ram.store(UInt8(truncatingIfNeeded: i * 7), at: dataAt + UInt64(i)) }
        writeHeader(type: VirtioBlockRequestType.output, sector: 5)
        var r = run(&dev, [.r(header, 16), .r(dataAt, 700), .r(dataAt + 700, 324), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 1, "a write hands back only the status byte")
        XCTAssertEqual(Array(dev.storage.data[5 * 512..<7 * 512]), (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) })
        XCTAssertEqual(dev.storage.log, ["write 2560 700", "write 3260 324"])
        // Read them back into other memory.
        writeHeader(type: VirtioBlockRequestType.input, sector: 5)
        r = run(&dev, [.r(header, 16), .w(0x40000, 512), .w(0x50000, 512), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 1025)
        XCTAssertEqual(ram.read(at: 0x40000, count: 512) + ram.read(at: 0x50000, count: 512),
                       (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) })
        XCTAssertTrue(line.level)
    }

    func testMergedHeaderAndStatusBuffers() {
        var dev = makeDevice()
        // Header + data in one readable buffer; data + status in one writable buffer.
        writeHeader(type: VirtioBlockRequestType.output, sector: 1, at: 0x60000)
        ram.fill(0x5A, at: 0x60010, count: 512)
        var r = run(&dev, [.r(0x60000, 16 + 512), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(Array(dev.storage.data[512..<1024]), [UInt8](repeating: 0x5A, count: 512))
        writeHeader(type: VirtioBlockRequestType.input, sector: 2)
        r = run(&dev, [.r(header, 16), .w(statusAt - 512, 513)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 513)
        XCTAssertEqual(ram.read(at: statusAt - 512, count: 512), [UInt8](repeating: 2, count: 512))
    }

    func testOutOfRangeAndOverflowingSectors() {
        var dev = makeDevice(bytes: 64 * 512)
        for sector: UInt64 in [64, 63 + 1, .max, .max / 512 + 1, UInt64.max / 512] {
            writeHeader(type: VirtioBlockRequestType.input, sector: sector)
            let r = run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)])
            XCTAssertEqual(r.status, VirtioBlockStatus.ioError, "sector \(sector)")
            XCTAssertEqual(r.used, 1)
        }
        writeHeader(type: VirtioBlockRequestType.output, sector: 63)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 1024), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        writeHeader(type: VirtioBlockRequestType.input, sector: 63)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ok)
        writeHeader(type: VirtioBlockRequestType.input, sector: 0) // not whole sectors
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 100), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(dev.storage.log, ["read 32256 512"], "only the valid read reached the storage")
    }

    func testPartialTrailingSectorIsInvisible() {
        var dev = makeDevice(bytes: 2 * 512 + 100)
        XCTAssertEqual(dev.block.readConfig(offset: 0, size: 8), 2)
        writeHeader(type: VirtioBlockRequestType.input, sector: 2)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
    }

    func testWrongDirectionDataIsIOError() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.output, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        writeHeader(type: VirtioBlockRequestType.input, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(dev.storage.log, [])
    }

    func testReadOnlyDrive() {
        var dev = makeDevice(readOnly: true)
        writeHeader(type: VirtioBlockRequestType.output, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        writeHeader(type: VirtioBlockRequestType.writeZeroes, sector: 0)
        ram.store(UInt64(0), at: dataAt)
        ram.store(UInt32(1), at: dataAt + 8)
        ram.store(UInt32(0), at: dataAt + 12)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 16), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        writeHeader(type: VirtioBlockRequestType.input, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ok)
        XCTAssertEqual(dev.storage.log, ["read 0 512"])
    }

    func testFlushDependsOnCacheType() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.flush, sector: 0)
        var r = run(&dev, [.r(header, 16), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 1)
        XCTAssertEqual(dev.storage.log, ["flush"])
        dev.storage.failNext = true
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)

        var unsafe = makeDevice(configuration: VirtioBlockConfiguration(cacheType: .unsafe, queueSize: 16))
        XCTAssertEqual(unsafe.block.deviceFeatures & VirtioBlockFeature.flush, 0)
        r = run(&unsafe, [.r(header, 16), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(unsafe.storage.log, [])
    }

    func testGetID() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.getID, sector: 0)
        ram.fill(0xFF, at: dataAt, count: 256)
        var r = run(&dev, [.r(header, 16), .w(dataAt, 20), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 21)
        XCTAssertEqual(ram.read(at: dataAt, count: 21), Array("disk-0".utf8) + [UInt8](repeating: 0, count: 14) + [0xFF])
        // A longer id is cut at 20 bytes; a shorter buffer gets what fits.
        var long = makeDevice(configuration: VirtioBlockConfiguration(driveID: String(repeating: "a", count: 30), queueSize: 16))
        r = run(&long, [.r(header, 16), .w(dataAt, 8), .w(dataAt + 100, 100), .w(statusAt, 1)])
        XCTAssertEqual(r.used, 21)
        XCTAssertEqual(ram.read(at: dataAt, count: 8) + ram.read(at: dataAt + 100, count: 13), [UInt8](repeating: 0x61, count: 20) + [0xFF])
        r = run(&dev, [.r(header, 16), .w(dataAt, 4), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 5)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 20), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
    }

    private func writeSegments(_ segments: [(sector: UInt64, count: UInt32, flags: UInt32)]) -> UInt32 {
        for (i, s) in segments.enumerated() {
            let at = dataAt + 16 * UInt64(i)
            ram.store(s.sector, at: at)
            ram.store(s.count, at: at + 8)
            ram.store(s.flags, at: at + 12)
        }
        return UInt32(16 * segments.count)
    }

    func testDiscard() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.discard, sector: 0)
        var n = writeSegments([(2, 1, 0), (10, 2, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.ok)
        XCTAssertEqual(dev.storage.log, ["discard 1024 512", "discard 5120 1024"])
        // Unmap on a discard, or unknown flags: unsupported; nothing applied.
        n = writeSegments([(2, 1, 0), (3, 1, 1)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.unsupported)
        n = writeSegments([(3, 1, 2)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.unsupported)
        // Out of range, overflowing, not a whole segment list, no list.
        n = writeSegments([(63, 2, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        n = writeSegments([(UInt64.max / 256, 1, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 15), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        // A list split across buffers is gathered.
        n = writeSegments([(4, 1, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 5), .r(dataAt + 5, 11), .w(statusAt, 1)]).status,
                       VirtioBlockStatus.ok)
        XCTAssertEqual(dev.storage.log.count, 3)
    }

    func testDiscardLimits() {
        var config = VirtioBlockConfiguration(queueSize: 16)
        config.maxDiscardSegments = 1
        config.maxDiscardSectors = 4
        var dev = makeDevice(configuration: config)
        writeHeader(type: VirtioBlockRequestType.discard, sector: 0)
        var n = writeSegments([(0, 1, 0), (1, 1, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.unsupported)
        n = writeSegments([(0, 5, 0)])
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        var off = makeDevice(configuration: VirtioBlockConfiguration(queueSize: 16, discard: false, writeZeroes: false))
        XCTAssertEqual(off.block.deviceFeatures & (VirtioBlockFeature.discard | VirtioBlockFeature.writeZeroes), 0)
        n = writeSegments([(0, 1, 0)])
        XCTAssertEqual(run(&off, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)]).status, VirtioBlockStatus.unsupported)
        XCTAssertEqual(dev.storage.log, [])
    }

    func testWriteZeroes() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.writeZeroes, sector: 0)
        let n = writeSegments([(1, 1, 1), (3, 2, 0)])
        let r = run(&dev, [.r(header, 16), .r(dataAt, n), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ok)
        XCTAssertEqual(r.used, 1)
        XCTAssertEqual(dev.storage.log, ["zeroes 512 512 true", "zeroes 1536 1024 false"])
        XCTAssertEqual(Array(dev.storage.data[512..<1024]), [UInt8](repeating: 0, count: 512))
        XCTAssertEqual(dev.storage.data[1024], 2)
        var noUnmap = VirtioBlockConfiguration(queueSize: 16)
        noUnmap.writeZeroesMayUnmap = false
        var dev2 = makeDevice(configuration: noUnmap)
        _ = writeSegments([(1, 1, 1)])
        XCTAssertEqual(run(&dev2, [.r(header, 16), .r(dataAt, 16), .w(statusAt, 1)]).status, VirtioBlockStatus.ok)
        XCTAssertEqual(dev2.storage.log, ["zeroes 512 512 false"])
    }

    func testUnsupportedType() {
        var dev = makeDevice()
        for type: UInt32 in [2, 3, 5, 7, 9, 12, 14, 0xFFFF_FFFF] {
            writeHeader(type: type, sector: 0)
            let r = run(&dev, [.r(header, 16), .w(statusAt, 1)])
            XCTAssertEqual(r.status, VirtioBlockStatus.unsupported, "type \(type)")
            XCTAssertEqual(r.used, 1)
        }
    }

    func testStorageFailureIsIOError() {
        var dev = makeDevice()
        dev.storage.failNext = true
        writeHeader(type: VirtioBlockRequestType.input, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .w(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
        dev.storage.failNext = true
        writeHeader(type: VirtioBlockRequestType.output, sector: 0)
        XCTAssertEqual(run(&dev, [.r(header, 16), .r(dataAt, 512), .w(statusAt, 1)]).status, VirtioBlockStatus.ioError)
    }

    func testShortOrMissingHeaderWithStatusIsIOError() {
        var dev = makeDevice()
        writeHeader(type: VirtioBlockRequestType.input, sector: 0)
        var r = run(&dev, [.r(header, 15), .w(dataAt, 512), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ioError)
        XCTAssertEqual(r.used, 1)
        r = run(&dev, [.w(dataAt, 512), .w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ioError)
        r = run(&dev, [.w(statusAt, 1)])
        XCTAssertEqual(r.status, VirtioBlockStatus.ioError)
        XCTAssertEqual(dev.storage.log, [])
        XCTAssertEqual(dev.transport.state.status & VirtioStatus.deviceNeedsReset, 0)
    }

    func testMissingStatusNeedsReset() {
        for segments: [Seg] in [[.r(header, 16), .r(dataAt, 512)], [.r(header, 16)], [.r(header, 16), .w(statusAt, 0)]] {
            var dev = makeDevice()
            writeHeader(type: VirtioBlockRequestType.output, sector: 0)
            dev.driver.submit(segments)
            dev.transport.queueNotified(0)
            XCTAssertEqual(dev.driver.usedIndex, 0)
            XCTAssertNotEqual(dev.transport.state.status & VirtioStatus.deviceNeedsReset, 0)
            XCTAssertEqual(dev.transport.state.failure, "queue 0: block request 0 has no status byte")
            XCTAssertEqual(dev.storage.log, [])
        }
    }
}

final class VirtioEntropyTests: XCTestCase {
    let ram = FakeRAM(size: 1 << 20)

    func testFillsWritableBuffersAndSkipsReadableOnes() {
        let source = CountingEntropy()
        let rng = VirtioEntropy(source: source, queueSize: 8)
        XCTAssertEqual(rng.deviceID, 4)
        XCTAssertEqual(rng.queueMaxSizes, [8])
        XCTAssertEqual(rng.deviceFeatures, 0)
        XCTAssertEqual(rng.readConfig(offset: 0, size: 4), 0)
        let line = LineRecorder()
        let transport = VirtioMMIOTransport(backend: rng, memory: ram, interrupt: line)
        var d = TestDriver(ram: ram, size: 8)
        MMIODriver(transport: transport).bringUp(d)
        ram.fill(0xEE, at: 0x10000, count: 64)
        d.submit([.w(0x10000, 16), .w(0x10020, 4)])
        d.submit([.r(0x11000, 32)])
        d.submit([.r(0x11000, 8), .w(0x12000, 0), .w(0x12000, 3)])
        transport.queueNotified(0)
        XCTAssertEqual(d.usedIndex, 3)
        XCTAssertEqual(d.usedElement(0).length, 20)
        XCTAssertEqual(ram.read(at: 0x10000, count: 17), Array(1...16) + [0xEE])
        XCTAssertEqual(ram.read(at: 0x10020, count: 4), [17, 18, 19, 20])
        XCTAssertEqual(d.usedElement(1).length, 0, "nothing writable, nothing written")
        XCTAssertEqual(ram.read(at: 0x11000, count: 1), [0])
        XCTAssertEqual(d.usedElement(2).length, 3)
        XCTAssertEqual(ram.read(at: 0x12000, count: 3), [21, 22, 23])
        XCTAssertTrue(line.level)
    }

    func testShortSourceGivesShortUsedLength() throws {
        let source = CountingEntropy()
        source.remaining = 10
        let rng = VirtioEntropy(source: source)
        let chain = DescriptorChain(head: 0, buffers: [DescriptorBuffer(gpa: 0x100, length: 8, isDeviceWritable: true),
                                                        DescriptorBuffer(gpa: 0x200, length: 8, isDeviceWritable: true)])
        XCTAssertEqual(try rng.handle(chain, queue: 0, memory: ram), 10)
    }
}
