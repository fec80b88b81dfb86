import TestSupport
@testable import Devices
import XCTest


/// One thing that happens to a device; replayed identically on an original and its restored copy.
private enum Access {
    case read(UInt16)
    case write(UInt16, UInt8)
    case receive(UInt8)  // UART only: a byte from the host
}

/// A UART with its wiring: what it transmitted and the levels its interrupt line was set to.
private final class UARTRig {
    final class Sink { var bytes: [UInt8] = [] }
    let line = RecordingLine()
    let sink = Sink()
    let uart: Serial8250

    init() {
        let sink = self.sink
        uart = Serial8250(transmit: { sink.bytes.append($0) }, line: line)
    }
}

final class DeviceSnapshotTests: XCTestCase {
    // MARK: - Writer and reader

    func testWriterIsLittleEndianAndReaderReadsItBack() throws {
        var w = SnapshotWriter()
        w.u8(0x12)
        w.u16(0x3456)
        w.u32(0x789a_bcde)
        w.u64(0x0102_0304_0506_0708)
        w.bool(true)
        w.bool(false)
        w.bytes([0xaa, 0xbb])
        XCTAssertEqual(w.bytes, [0x12, 0x56, 0x34, 0xde, 0xbc, 0x9a, 0x78, 8, 7, 6, 5, 4, 3, 2, 1, 1, 0,
                                 2, 0, 0, 0, 0xaa, 0xbb])
        var r = SnapshotReader(w.bytes)
        XCTAssertEqual(try r.u8(), 0x12)
        XCTAssertEqual(try r.u16(), 0x3456)
        XCTAssertEqual(try r.u32(), 0x789a_bcde)
        XCTAssertEqual(try r.u64(), 0x0102_0304_0506_0708)
        XCTAssertEqual(try r.bool(), true)
        XCTAssertEqual(try r.bool(), false)
        XCTAssertEqual(try r.bytes(max: 2), [0xaa, 0xbb])
        XCTAssertNoThrow(try r.finish())
    }

    func testReaderRefusesTruncationLongStringsBadBooleansAndTrailingBytes() {
        var r = SnapshotReader([1, 2, 3])
        XCTAssertThrowsError(try r.u32()) { XCTAssertEqual($0 as? SnapshotError, .truncated) }
        var long = SnapshotReader([3, 0, 0, 0, 1, 2, 3])
        XCTAssertThrowsError(try long.bytes(max: 2)) { XCTAssertEqual($0 as? SnapshotError, .invalid("byte string of 3 bytes, at most 2 allowed")) }
        var huge = SnapshotReader([0xff, 0xff, 0xff, 0xff])
        XCTAssertThrowsError(try huge.bytes(max: Int.max)) { XCTAssertEqual($0 as? SnapshotError, .truncated) }
        var short = SnapshotReader([2, 0, 0, 0, 1])
        XCTAssertThrowsError(try short.bytes(max: 16)) { XCTAssertEqual($0 as? SnapshotError, .truncated) }
        var flag = SnapshotReader([2])
        XCTAssertThrowsError(try flag.bool()) { XCTAssertEqual($0 as? SnapshotError, .invalid("boolean byte 2")) }
        var rest = SnapshotReader([0, 9])
        XCTAssertEqual(try rest.u8(), 0)
        XCTAssertThrowsError(try rest.finish()) { XCTAssertEqual($0 as? SnapshotError, .trailingBytes) }
    }

    // MARK: - Replaying the same accesses on an original and its restored copy

    /// Applies `accesses` to both devices, comparing every read and, after each step, `state` (line level,
    /// transmitted bytes, resets): the first difference fails the test.
    private func assertSameBehaviour(_ a: PortDevice, _ b: PortDevice, _ accesses: [Access],
                                     receive: ((PortDevice, UInt8) -> Void)? = nil,
                                     state: (PortDevice) -> String = { _ in "" },
                                     file: StaticString = #filePath, line: UInt = #line) {
        for (step, access) in accesses.enumerated() {
            switch access {
            case .read(let offset):
                let x = a.read(offset: offset), y = b.read(offset: offset)
                guard x == y else {
                    XCTFail("step \(step): read of offset \(offset) gave \(x) and \(y) after restore", file: file, line: line)
                    return
                }
            case .write(let offset, let value):
                a.write(offset: offset, value: value)
                b.write(offset: offset, value: value)
            case .receive(let byte):
                receive?(a, byte)
                receive?(b, byte)
            }
            let sa = state(a), sb = state(b)
            guard sa == sb else {
                XCTFail("step \(step) (\(access)): \(sa) vs \(sb) after restore", file: file, line: line)
                return
            }
        }
    }

    private func randomAccesses(count: Int, offsets: Range<UInt16>, receives: Bool, seed: UInt64) -> [Access] {
        var rng = SplitMix(state: seed)
        return (0..<count).map { _ in
            let offset = UInt16.random(in: offsets, using: &rng)
            switch UInt8.random(in: 0..<(receives ? 5 : 4), using: &rng) {
            case 0, 1: return .read(offset)
            case 2, 3: return .write(offset, UInt8.random(in: 0...255, using: &rng))
            default: return .receive(UInt8.random(in: 0...255, using: &rng))
            }
        }
    }

    // MARK: - Serial8250

    /// FIFO on (trigger 14) holding 3 looped-back bytes, divisor 0x0201 written under DLAB, every interrupt
    /// enabled with THRI pending, a scratch value, loopback with all modem outputs on.
    private func busyUART(loopback: Bool) -> UARTRig {
        let rig = UARTRig()
        let u = rig.uart
        u.write(offset: 3, value: 0x83)  // DLAB
        u.write(offset: 0, value: 0x01)
        u.write(offset: 1, value: 0x02)
        u.write(offset: 3, value: 0x1b)  // 8E1, DLAB clear
        u.write(offset: 2, value: 0xc7)  // FIFO on, cleared, trigger 14
        if loopback {
            u.write(offset: 4, value: 0x1f)  // loop, OUT2, OUT1, RTS, DTR
            for byte in Array("abc".utf8) { u.write(offset: 0, value: byte) }
        } else {
            u.write(offset: 4, value: 0x0b)  // OUT2, RTS, DTR
            for byte in Array("abc".utf8) { u.receive(byte) }
        }
        u.write(offset: 1, value: 0x0f)  // every interrupt; enabling THRI sets it pending
        u.write(offset: 7, value: 0x5a)
        return rig
    }

    private func uartState(_ device: PortDevice, _ rig: UARTRig) -> String {
        "level \(rig.line.level) sent \(rig.sink.bytes) space \(rig.uart.receiveSpace) divisor \(rig.uart.divisor)"
    }

    private func checkUARTRestore(loopback: Bool, expectedLevel: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        let original = busyUART(loopback: loopback)
        XCTAssertEqual(original.uart.receiveSpace, 13, "3 bytes in a 16-byte FIFO", file: file, line: line)
        XCTAssertEqual(original.line.level, expectedLevel, file: file, line: line)
        let copy = UARTRig()
        try copy.uart.restore(snapshot: original.uart.snapshot())
        XCTAssertEqual(copy.line.levels, [expectedLevel], "the restored level is asserted once", file: file, line: line)
        XCTAssertEqual(copy.uart.snapshot(), original.uart.snapshot(), file: file, line: line)

        // Scripted: every register, the FIFO drained, loopback left (the line may rise), host bytes, FIFO off.
        var script: [Access] = (0..<8).map { .read($0) }
        script += [.read(2), .read(0), .write(4, 0x0b), .read(2), .read(0), .read(0), .read(5), .read(2)]
        script += [.receive(0x41), .read(2), .write(2, 0x00), .read(5), .read(2), .write(0, 0x42), .read(2)]
        script += [.write(3, 0x80), .read(0), .read(1), .write(3, 0x03), .read(7), .read(6), .read(6)]
        let states = { (d: PortDevice) -> String in self.uartState(d, d === original.uart ? original : copy) }
        let receive = { (d: PortDevice, b: UInt8) in (d === original.uart ? original : copy).uart.receive(b) }
        assertSameBehaviour(original.uart, copy.uart, script, receive: receive, state: states, file: file, line: line)
        // And a long random continuation, including FIFO overruns and loopback toggles.
        let random = randomAccesses(count: 5000, offsets: 0..<8, receives: true, seed: loopback ? 1 : 2)
        assertSameBehaviour(original.uart, copy.uart, random, receive: receive, state: states, file: file, line: line)
    }

    func testUARTInLoopbackRestoresAndBehavesTheSame() throws {
        try checkUARTRestore(loopback: true, expectedLevel: false)
    }

    func testUARTWithItsLineUpRestoresAndReassertsIt() throws {
        try checkUARTRestore(loopback: false, expectedLevel: true)
    }

    /// The UART's fields in snapshot order, for forging snapshots.
    private func uartSnapshot(divisor: UInt16 = 12, ier: UInt8 = 0, lcr: UInt8 = 3, mcr: UInt8 = 0x08,
                              scr: UInt8 = 0, fcr: UInt8 = 0, overrun: UInt8 = 0, msrDeltas: UInt8 = 0,
                              thrEmpty: UInt8 = 0, level: UInt8 = 0, fifo: [UInt8] = [],
                              fifoLength: UInt32? = nil) -> [UInt8] {
        var w = SnapshotWriter()
        w.u16(divisor)
        for b in [ier, lcr, mcr, scr, fcr, overrun, msrDeltas, thrEmpty, level] { w.u8(b) }
        w.u32(fifoLength ?? UInt32(fifo.count))
        var bytes = w.bytes
        bytes += fifo
        return bytes
    }

    func testForgedUARTSnapshotsAreRefusedAndChangeNothing() {
        let rig = busyUART(loopback: false)
        XCTAssertNoThrow(try UARTRig().uart.restore(snapshot: uartSnapshot()), "the forging helper matches save")
        XCTAssertEqual(uartSnapshot(), UARTRig().uart.snapshot())
        let before = rig.uart.snapshot()
        let levels = rig.line.levels
        let cases: [(String, [UInt8], SnapshotError)] = [
            ("IER bit 4", uartSnapshot(ier: 0x10), .invalid("UART IER 0x10")),
            ("MCR bit 5", uartSnapshot(mcr: 0x28), .invalid("UART MCR 0x28")),
            ("FCR clear bits", uartSnapshot(fcr: 0x03), .invalid("UART FCR 0x3")),
            ("MSR deltas", uartSnapshot(msrDeltas: 0x10), .invalid("UART MSR deltas 0x10")),
            ("boolean 2", uartSnapshot(overrun: 2), .invalid("boolean byte 2")),
            ("17 bytes in the FIFO", uartSnapshot(fcr: 1, fifo: Array(repeating: 1, count: 17)),
             .invalid("byte string of 17 bytes, at most 16 allowed")),
            ("2 bytes without a FIFO", uartSnapshot(fifo: [1, 2]), .invalid("UART holds 2 received bytes, its FIFO 1")),
            ("huge FIFO length", uartSnapshot(fifoLength: .max), .invalid("byte string of 4294967295 bytes, at most 16 allowed")),
            ("level up, nothing pending", uartSnapshot(level: 1), .invalid("UART line level true disagrees with its registers")),
            ("level down, THRI pending", uartSnapshot(ier: 2, thrEmpty: 1), .invalid("UART line level false disagrees with its registers")),
            ("FIFO bytes missing", uartSnapshot(fcr: 1, fifo: [1], fifoLength: 2), .truncated),
            ("trailing byte", before + [0], .trailingBytes),
        ]
        assertRefusesForgeries(rig.uart, before: before, cases)
        // Only the trailing-bytes case touched the line (restoring, then putting back), and it ends where it was.
        XCTAssertEqual(rig.line.level, true)
        XCTAssertEqual(rig.line.levels, levels + [true, true])
    }

    // MARK: - I8042

    private final class Resets { var count = 0 }

    func testI8042WithAPendingCommandAndOutputRestoresAndBehavesTheSame() throws {
        let resetsA = Resets(), resetsB = Resets()
        let original = I8042 { resetsA.count += 1 }
        original.write(offset: 4, value: 0x60)
        original.write(offset: 0, value: 0x47)  // command byte
        original.write(offset: 4, value: 0xaa)  // self-test: 0x55 waiting
        original.write(offset: 4, value: 0xd2)  // waits for a byte to echo
        let copy = I8042 { resetsB.count += 1 }
        try copy.restore(snapshot: original.snapshot())
        XCTAssertEqual(copy.snapshot(), original.snapshot())
        XCTAssertEqual(resetsB.count, 0, "restoring pulses nothing")

        let state = { (d: PortDevice) in "resets \(d === original ? resetsA.count : resetsB.count)" }
        let script: [Access] = [.read(4), .read(0), .read(4), .write(0, 0x99), .read(4), .read(0), .write(4, 0x20),
                                .read(0), .write(4, 0xd0), .read(0), .write(4, 0xfe), .write(4, 0xd1), .write(0, 0x00)]
        assertSameBehaviour(original, copy, script, state: state)
        XCTAssertEqual(resetsA.count, 2)
        assertSameBehaviour(original, copy, randomAccesses(count: 5000, offsets: 0..<5, receives: false, seed: 3), state: state)
    }

    private func i8042Snapshot(command: UInt8 = 0x30, port: UInt8 = 1, outputFlag: UInt8 = 0, output: UInt8 = 0,
                               lastWasCommand: UInt8 = 0, pendingFlag: UInt8 = 0, pending: UInt8 = 0,
                               fromKeyboard: UInt8 = 0, keys: [UInt8] = [], keyCount: UInt32? = nil, line: UInt8 = 0) -> [UInt8] {
        let count = keyCount ?? UInt32(keys.count)
        return [command, port, outputFlag, output, lastWasCommand, pendingFlag, pending, fromKeyboard]
            + (0..<4).map { UInt8(truncatingIfNeeded: count >> (8 * $0)) } + keys + [line]
    }

    func testI8042WithQueuedScancodesRestoresAndBehavesTheSame() throws {
        let lineA = RecordingLine(), lineB = RecordingLine()
        let original = I8042(line: lineA) {}
        original.write(offset: 4, value: 0x60)
        original.write(offset: 0, value: 0x01)  // keyboard enabled, its interrupt on
        for byte in I8042.ctrlAltDel { original.keyboardSend(byte) }
        XCTAssertEqual(original.read(offset: 0), 0x14)
        let copy = I8042(line: lineB) {}
        try copy.restore(snapshot: original.snapshot())
        XCTAssertEqual(copy.snapshot(), original.snapshot())
        XCTAssertEqual(lineB.levels, [true], "the restored device says its line's level")
        var a: [UInt8] = [], b: [UInt8] = []
        while original.read(offset: 4) & 1 == 1 { a.append(original.read(offset: 0)) }
        while copy.read(offset: 4) & 1 == 1 { b.append(copy.read(offset: 0)) }
        XCTAssertEqual(a, Array(I8042.ctrlAltDel.dropFirst()))
        XCTAssertEqual(b, a, "the successor delivers every queued scancode once")
        assertSameBehaviour(original, copy, randomAccesses(count: 5000, offsets: 0..<5, receives: false, seed: 4), state: { _ in "" })
    }

    func testForgedI8042SnapshotsAreRefusedAndChangeNothing() {
        XCTAssertEqual(i8042Snapshot(), I8042 {}.snapshot(), "the forging helper matches save")
        let kbc = I8042 {}
        kbc.write(offset: 4, value: 0xaa)
        kbc.write(offset: 4, value: 0x60)
        let before = kbc.snapshot()
        let cases: [(String, [UInt8], SnapshotError)] = [
            ("pending command without data", i8042Snapshot(pendingFlag: 1, pending: 0x20),
             .invalid("i8042 pending command 0x20 takes no data byte")),
            ("absent output with a value", i8042Snapshot(output: 7), .invalid("i8042 absent output buffer holds 0x7")),
            ("absent command with a value", i8042Snapshot(pending: 0x60), .invalid("i8042 absent pending command holds 0x60")),
            ("flag 2", i8042Snapshot(outputFlag: 2), .invalid("boolean byte 2")),
            ("keyboard byte without output", i8042Snapshot(fromKeyboard: 1), .invalid("i8042 keyboard byte in an empty output buffer")),
            ("16 queued behind a keyboard byte", i8042Snapshot(outputFlag: 1, output: 0x14, fromKeyboard: 1, keys: [UInt8](repeating: 0x14, count: 16)),
             .invalid("i8042 keyboard holds 17 bytes, at most 16")),
            ("17 queued scancodes", i8042Snapshot(keys: [UInt8](repeating: 0x14, count: 17)),
             .invalid("byte string of 17 bytes, at most 16 allowed")),
            ("a forged queue length", i8042Snapshot(keyCount: 0xffff_ffff), .invalid("byte string of 4294967295 bytes, at most 16 allowed")),
            ("scancodes behind an empty buffer", i8042Snapshot(command: 0x01, keys: [0x14]),
             .invalid("i8042 scancodes waiting behind an empty output buffer")),
            ("line high without a keyboard byte", i8042Snapshot(command: 0x01, line: 1), .invalid("i8042 interrupt line high against its registers")),
            ("line low with a keyboard byte and the interrupt on",
             i8042Snapshot(command: 0x01, outputFlag: 1, output: 0x14, fromKeyboard: 1), .invalid("i8042 interrupt line low against its registers")),
            ("trailing byte", before + [0], .trailingBytes),
        ]
        assertRefusesForgeries(kbc, before: before, cases)
    }

    // MARK: - CMOSRTC

    func testCMOSWithIndexAndRAMRestoresAndBehavesTheSame() throws {
        let clock: () -> Int64 = { 1_795_654_923 }
        let original = CMOSRTC(secondsSinceEpoch: clock)
        for (index, value) in [(0x40, 0x5a), (0x7f, 0xa5), (0x0e, 0x11), (0x0a, 0xff), (0x0b, 0x07)] {
            original.write(offset: 0, value: UInt8(index))
            original.write(offset: 1, value: UInt8(value))
        }
        original.write(offset: 0, value: 0xc0)  // index 0x40, NMI bit set
        let copy = CMOSRTC(secondsSinceEpoch: clock)
        try copy.restore(snapshot: original.snapshot())
        XCTAssertEqual(copy.snapshot(), original.snapshot())
        var script: [Access] = [.read(1), .read(0)]
        for index: UInt8 in [0x00, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x32, 0x40, 0x7f] { script += [.write(0, index), .read(1)] }
        assertSameBehaviour(original, copy, script)
        XCTAssertEqual(copy.read(offset: 1), 0xa5)
        XCTAssertEqual(original.read(offset: 1), 0xa5)
        assertSameBehaviour(original, copy, randomAccesses(count: 5000, offsets: 0..<2, receives: false, seed: 4))
    }

    func testForgedCMOSSnapshotsAreRefusedAndChangeNothing() {
        let rtc = CMOSRTC { 0 }
        rtc.write(offset: 0, value: 0x20)
        rtc.write(offset: 1, value: 0x77)
        let before = rtc.snapshot()
        func forged(index: UInt8 = 0, ram: [UInt8]? = nil, edit: (inout [UInt8]) -> Void = { _ in }) -> [UInt8] {
            var ram = ram ?? Array(before[5...])
            edit(&ram)
            var w = SnapshotWriter()
            w.u8(index)
            w.bytes(ram)
            return w.bytes
        }
        XCTAssertEqual(forged(index: 0x20), before, "the forging helper matches save")
        let cases: [(String, [UInt8], SnapshotError)] = [
            ("NMI bit in the index", forged(index: 0x80), .invalid("CMOS index 0x80")),
            ("127 bytes of RAM", forged { $0.removeLast() }, .invalid("CMOS RAM of 127 bytes, not 128")),
            ("129 bytes of RAM", forged { $0.append(0) }, .invalid("byte string of 129 bytes, at most 128 allowed")),
            ("update in progress", forged { $0[0x0a] |= 0x80 }, .invalid("CMOS status registers changed where the guest cannot change them")),
            ("binary mode", forged { $0[0x0b] |= 0x04 }, .invalid("CMOS status registers changed where the guest cannot change them")),
            ("RAM invalid", forged { $0[0x0d] = 0 }, .invalid("CMOS status registers changed where the guest cannot change them")),
            ("trailing byte", before + [0], .trailingBytes),
        ]
        assertRefusesForgeries(rtc, before: before, cases)
    }

    // MARK: - TextWatch

    func testTextWatchResumesMidPattern() throws {
        var original = TextWatch("login: ")
        for byte in Array("xlog".utf8) { XCTAssertFalse(original.feed(byte)) }
        var w = SnapshotWriter()
        original.save(to: &w)
        var copy = TextWatch("login: ")
        var r = SnapshotReader(w.bytes)
        try copy.restore(from: &r)
        try r.finish()
        for byte in Array("in: login: ll".utf8) { XCTAssertEqual(copy.feed(byte), original.feed(byte)) }

        for matched: UInt32 in [7, 8, .max] {
            var bad = SnapshotWriter()
            bad.u32(matched)
            var reader = SnapshotReader(bad.bytes)
            XCTAssertThrowsError(try copy.restore(from: &reader)) {
                XCTAssertEqual($0 as? SnapshotError, .invalid("text watch matched \(matched) of a 7-byte pattern"))
            }
        }
        var short = SnapshotReader([1, 0])
        XCTAssertThrowsError(try copy.restore(from: &short)) { XCTAssertEqual($0 as? SnapshotError, .truncated) }
        // Unchanged by the refusals: "l" was matched last, so "ogin: " completes the pattern.
        for byte in Array("ogin:".utf8) { XCTAssertFalse(copy.feed(byte)) }
        XCTAssertTrue(copy.feed(UInt8(ascii: " ")))
    }

    // MARK: - Fuzz

    /// Random byte strings, and valid snapshots with random bytes changed, into each restore: never a trap; a
    /// refusal leaves the device as it was; an accepted snapshot is one the device would write itself.
    func testRandomSnapshotsNeverTrap() {
        let rig = busyUART(loopback: false)
        let kbc = I8042 {}
        let rtc = CMOSRTC { 0 }
        let devices: [Snapshotting] = [rig.uart, kbc, rtc]
        var rng = SplitMix(state: 5)
        var accepted = [0, 0, 0]
        for (which, device) in devices.enumerated() {
            let valid = device.snapshot()
            for round in 0..<10_000 {
                let bytes = rng.hostileSnapshot(from: valid, random: round % 2 == 0, round: round)
                let before = device.snapshot()
                do {
                    try device.restore(snapshot: bytes)
                    accepted[which] += 1
                    XCTAssertEqual(device.snapshot(), bytes, "device \(which): an accepted snapshot is canonical")
                } catch {
                    XCTAssertEqual(device.snapshot(), before, "device \(which): a refused snapshot changes nothing")
                }
            }
        }
        XCTAssertTrue(accepted.allSatisfy { $0 > 0 }, "the mutations reach the accepting path too: \(accepted)")

        var watch = TextWatch("login: ")
        for _ in 0..<10_000 {
            let bytes = (0..<Int.random(in: 0...6, using: &rng)).map { _ in UInt8.random(in: 0...8, using: &rng) }
            var reader = SnapshotReader(bytes)
            try? watch.restore(from: &reader)
            _ = watch.feed(UInt8.random(in: 0...255, using: &rng))  // a restored count must stay usable
        }
    }
}
