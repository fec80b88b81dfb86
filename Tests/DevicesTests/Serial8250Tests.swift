import XCTest
@testable import Devices

final class RecordingLine: InterruptLine {
    var levels: [Bool] = []
    var level: Bool { levels.last ?? false }
    func set(_ asserted: Bool) { levels.append(asserted) }
}

final class Serial8250Tests: XCTestCase {
    var sent: [UInt8] = []
    var line = RecordingLine()
    lazy var uart = Serial8250(transmit: { self.sent.append($0) }, line: line)

    func testTransmitGoesToTheSink() {
        for b in Array("hi\n".utf8) { uart.write(offset: 0, value: b) }
        XCTAssertEqual(sent, Array("hi\n".utf8))
    }

    func testDivisorLatchSharesDataAndIER() {
        uart.write(offset: 3, value: 0x83)  // DLAB, 8N1
        uart.write(offset: 0, value: 0x01)
        uart.write(offset: 1, value: 0x02)
        XCTAssertEqual(uart.divisor, 0x0201)
        XCTAssertEqual(uart.read(offset: 0), 0x01)
        XCTAssertEqual(uart.read(offset: 1), 0x02)
        XCTAssertTrue(sent.isEmpty, "a divisor write must not transmit")
        uart.write(offset: 3, value: 0x03)
        uart.write(offset: 1, value: 0x05)
        XCTAssertEqual(uart.read(offset: 1), 0x05, "IER is back once DLAB clears")
        XCTAssertEqual(uart.divisor, 0x0201)
        XCTAssertEqual(uart.read(offset: 3), 0x03)
    }

    func testLineStatusBits() {
        XCTAssertEqual(uart.read(offset: 5), 0x60, "THR empty and transmitter empty, no data")
        uart.receive(0x41)
        XCTAssertEqual(uart.read(offset: 5), 0x61, "data ready")
        XCTAssertEqual(uart.read(offset: 0), 0x41)
        XCTAssertEqual(uart.read(offset: 5), 0x60)
    }

    func testFIFODepthAndOverrun() {
        uart.write(offset: 2, value: 0x07)  // enable and clear FIFOs
        XCTAssertTrue(uart.fifoEnabled)
        XCTAssertEqual(uart.read(offset: 2) & 0xc0, 0xc0, "IIR reports FIFOs enabled")
        for i in 0..<16 { uart.receive(UInt8(i)) }
        XCTAssertEqual(uart.receiveSpace, 0)
        XCTAssertEqual(uart.read(offset: 5) & 0x02, 0, "16 bytes fit")
        uart.receive(0xee)
        XCTAssertEqual(uart.read(offset: 5) & 0x03, 0x03, "the 17th byte overruns")
        XCTAssertEqual(uart.read(offset: 5) & 0x02, 0, "reading LSR clears the overrun")
        for i in 0..<16 { XCTAssertEqual(uart.read(offset: 0), UInt8(i)) }
        XCTAssertEqual(uart.read(offset: 5) & 0x01, 0, "the lost byte is not delivered")
    }

    func testWithoutFIFOOnlyOneByteIsHeld() {
        uart.receive(1)
        uart.receive(2)
        XCTAssertEqual(uart.read(offset: 5) & 0x03, 0x03)
        XCTAssertEqual(uart.read(offset: 0), 1)
    }

    func testFIFOClearDropsReceivedBytes() {
        uart.write(offset: 2, value: 0x01)
        uart.receive(9)
        uart.write(offset: 2, value: 0x03)
        XCTAssertEqual(uart.read(offset: 5) & 0x01, 0)
    }

    func testLoopbackReturnsTransmittedBytesAndModemLines() {
        uart.write(offset: 4, value: 0x10 | 0x0a)  // loop, RTS, OUT2: Linux's autoconfig probe
        XCTAssertEqual(uart.read(offset: 6) & 0xf0, 0x90, "CTS and DCD follow RTS and OUT2")
        uart.write(offset: 0, value: 0x5a)
        XCTAssertTrue(sent.isEmpty, "loopback does not reach the line")
        XCTAssertEqual(uart.read(offset: 5) & 0x01, 0x01)
        XCTAssertEqual(uart.read(offset: 0), 0x5a)
        uart.write(offset: 4, value: 0x10 | 0x05)  // DTR, OUT1
        XCTAssertEqual(uart.read(offset: 6), 0x60 | 0x0b, "DSR and RI set; deltas for CTS, DSR and DCD")
        XCTAssertEqual(uart.read(offset: 6) & 0x0f, 0, "reading MSR clears the deltas")
    }

    /// A peek gives what a read would, and nothing where the read would change the UART: the received byte, the
    /// THR-empty interrupt IIR acknowledges, an overrun LSR clears, MSR deltas.
    func testPeekAnswersOnlyReadsWithoutASideEffect() {
        uart.write(offset: 4, value: 0x08)  // OUT2
        uart.write(offset: 7, value: 0xa5)
        for offset: UInt16 in [1, 3, 4, 5, 6, 7] { XCTAssertEqual(uart.peek(offset: offset), uart.read(offset: offset)) }
        XCTAssertNil(uart.peek(offset: 0), "RBR takes the byte")
        uart.write(offset: 1, value: 0x02)  // THRI: pending at once
        let levels = line.levels
        XCTAssertNil(uart.peek(offset: 2), "reading IIR would acknowledge THRI")
        XCTAssertEqual(line.levels, levels, "a peek changes nothing")
        _ = uart.read(offset: 2)
        XCTAssertEqual(uart.peek(offset: 2), 0x01, "nothing pending: IIR reads without a side effect")
        for _ in 0..<2 { uart.receive(1) }  // no FIFO: the second overruns
        XCTAssertNil(uart.peek(offset: 5), "LSR would clear the overrun")
        XCTAssertEqual(uart.read(offset: 5) & 0x03, 0x03)
        XCTAssertEqual(uart.peek(offset: 5), 0x61, "data ready, no overrun")
        uart.write(offset: 4, value: 0x10 | 0x0a)  // loopback changes the modem lines: deltas
        XCTAssertNil(uart.peek(offset: 6), "MSR would clear its deltas")
        _ = uart.read(offset: 6)
        XCTAssertEqual(uart.peek(offset: 6), uart.read(offset: 6))
        uart.write(offset: 3, value: 0x83)  // DLAB: the divisor latch reads without a side effect
        XCTAssertEqual(uart.peek(offset: 0), 12)
    }

    func testScratchRegister() {
        uart.write(offset: 7, value: 0xa5)
        XCTAssertEqual(uart.read(offset: 7), 0xa5)
    }

    func testInterruptsFollowIERAndOUT2() {
        uart.write(offset: 4, value: 0x08)  // OUT2 gates the line on a PC
        XCTAssertEqual(uart.read(offset: 2) & 0x0f, 0x01, "nothing pending")
        uart.write(offset: 1, value: 0x02)  // THRI
        XCTAssertTrue(line.level, "enabling THRI with an empty THR raises it")
        XCTAssertEqual(uart.read(offset: 2) & 0x0f, 0x02)
        XCTAssertFalse(line.level, "reading IIR acknowledges THRI")
        uart.write(offset: 1, value: 0x03)
        uart.receive(0x31)
        XCTAssertTrue(line.level)
        XCTAssertEqual(uart.read(offset: 2) & 0x0f, 0x04, "received data outranks THRI")
        _ = uart.read(offset: 0)
        XCTAssertFalse(line.level)
        uart.write(offset: 4, value: 0x00)
        uart.receive(0x32)
        XCTAssertFalse(line.level, "without OUT2 the line stays low")
    }
}

final class PortBusTests: XCTestCase {
    func testRoutingSplittingAndUnclaimedPorts() throws {
        var out: [UInt8] = []
        var exit: Int32?
        let bus = PortBus()
        let uart = Serial8250(transmit: { out.append($0) })
        try bus.attach(uart, at: 0x3f8)
        try bus.attach(DebugExit { exit = $0 }, at: 0xf4)
        XCTAssertThrowsError(try bus.attach(DebugExit { _ in }, at: 0x3ff))
        bus.write(port: 0x3ff, size: 1, value: 0x77)
        XCTAssertEqual(bus.read(port: 0x3ff, size: 1), 0x77)
        XCTAssertEqual(bus.read(port: 0x3fd, size: 2), 0xb060, "LSR in the low byte, MSR (CTS, DSR, DCD) in the high byte")
        XCTAssertEqual(bus.read(port: 0x80, size: 4), 0xffff_ffff)
        bus.write(port: 0x3f8, size: 1, value: 0x41)
        XCTAssertEqual(out, [0x41])
        bus.write(port: 0xf4, size: 4, value: 0x1234_5603)
        XCTAssertEqual(exit, 7, "(3 << 1) | 1; the bus splits wider writes into bytes")
        XCTAssertEqual(bus.ranges, [0x3f8...0x3ff, 0xf4...0xf4])
    }
}
