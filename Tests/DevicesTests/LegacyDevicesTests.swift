@testable import Devices
import XCTest

final class LegacyDevicesTests: XCTestCase {
    func testI8042SelfTestCommandByteAndResetLine() {
        var resets = 0
        let kbc = I8042 { resets += 1 }
        XCTAssertEqual(kbc.read(offset: 4) & 1, 0, "output buffer empty")
        kbc.write(offset: 4, value: 0xaa)
        XCTAssertEqual(kbc.read(offset: 4) & 1, 1, "self-test result waiting")
        XCTAssertEqual(kbc.read(offset: 0), 0x55)
        XCTAssertEqual(kbc.read(offset: 4) & 1, 0)
        kbc.write(offset: 4, value: 0x60)
        kbc.write(offset: 0, value: 0x47)
        kbc.write(offset: 4, value: 0x20)
        XCTAssertEqual(kbc.read(offset: 0), 0x47, "command byte written and read back")
        XCTAssertEqual(kbc.read(offset: 1), 0xff, "port 0x61 is not the controller's")
        XCTAssertEqual(resets, 0)
        kbc.write(offset: 4, value: 0xfe)
        XCTAssertEqual(resets, 1, "pulse of output-port bit 0")
        kbc.write(offset: 4, value: 0xd1)
        kbc.write(offset: 0, value: 0xfe)
        XCTAssertEqual(resets, 2, "output port written with the reset bit low")
        kbc.write(offset: 4, value: 0xff)
        XCTAssertEqual(resets, 2, "pulsing no line")
    }

    func testI8042KeyboardQueuesScancodesAndRaisesIRQ1OncePerByte() {
        let line = RecordingLine()
        let kbc = I8042(line: line) {}
        kbc.keyboardSend(0x14)
        XCTAssertEqual(kbc.read(offset: 4) & 1, 0, "the keyboard is disabled at reset: its byte waits")
        XCTAssertEqual(line.levels, [])
        kbc.write(offset: 4, value: 0xae)  // enable the keyboard, interrupt still off
        XCTAssertEqual(kbc.read(offset: 4) & 1, 1)
        XCTAssertEqual(line.levels, [], "no IRQ 1 while the command byte has it off")
        XCTAssertEqual(kbc.read(offset: 0), 0x14)
        XCTAssertEqual(kbc.read(offset: 4) & 1, 0)

        kbc.write(offset: 4, value: 0x60)
        kbc.write(offset: 0, value: 0x01)  // keyboard enabled, its interrupt on
        for byte in I8042.ctrlAltDel { kbc.keyboardSend(byte) }
        XCTAssertEqual(kbc.keyboardSpace, I8042.keyboardBufferSize - I8042.ctrlAltDel.count, "the byte in the output buffer counts")
        XCTAssertEqual(line.levels, [true])
        var got: [UInt8] = []
        while kbc.read(offset: 4) & 1 == 1 { got.append(kbc.read(offset: 0)) }
        XCTAssertEqual(got, I8042.ctrlAltDel)
        XCTAssertEqual(got, [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14], "set 2: Ctrl, Alt, Delete down and up")
        // One rising edge per byte: the edge-triggered pin interrupts again for each.
        XCTAssertEqual(line.levels, [true] + Array([[Bool]](repeating: [false, true], count: got.count - 1).joined()) + [false])

        // A controller command's answer does not raise IRQ 1, and a scancode waiting in the buffer is not lost to it.
        kbc.keyboardSend(0x1c)
        kbc.write(offset: 4, value: 0x20)
        XCTAssertEqual(kbc.read(offset: 0), 0x01, "the command byte")
        XCTAssertEqual(kbc.read(offset: 0), 0x1c, "then the scancode")
        XCTAssertEqual(line.level, false)

        // The keyboard acknowledges commands written to it; a full buffer drops what does not fit.
        kbc.write(offset: 0, value: 0xf4)
        XCTAssertEqual(kbc.read(offset: 0), 0xfa)
        kbc.write(offset: 4, value: 0xad)  // disable the keyboard: bytes accumulate
        for i in 0..<20 { kbc.keyboardSend(UInt8(i)) }
        XCTAssertEqual(kbc.keyboardSpace, 0)
        kbc.write(offset: 4, value: 0xae)
        var queued: [UInt8] = []
        while kbc.read(offset: 4) & 1 == 1 { queued.append(kbc.read(offset: 0)) }
        XCTAssertEqual(queued, (0..<16).map { UInt8($0) })

        // A full keyboard whose byte a controller command pushes back loses nothing and stays within its buffer.
        for i in 0..<20 { kbc.keyboardSend(UInt8(i)) }
        XCTAssertEqual(kbc.keyboardSpace, 0)
        kbc.write(offset: 4, value: 0xaa)
        XCTAssertEqual(kbc.read(offset: 0), 0x55)
        var again: [UInt8] = []
        while kbc.read(offset: 4) & 1 == 1 { again.append(kbc.read(offset: 0)) }
        XCTAssertEqual(again, (0..<16).map { UInt8($0) })
    }

    func testCMOSClockInBCDFromTheInjectedTimeAndRAM() {
        // 2026-11-26 01:02:03 UTC, a Thursday.
        let rtc = CMOSRTC { 1_795_654_923 }
        func reg(_ r: UInt8) -> UInt8 { rtc.write(offset: 0, value: r | 0x80); return rtc.read(offset: 1) }
        XCTAssertEqual([reg(0x09), reg(0x08), reg(0x07), reg(0x04), reg(0x02), reg(0x00), reg(0x32)],
                       [0x26, 0x11, 0x26, 0x01, 0x02, 0x03, 0x20])
        XCTAssertEqual(reg(0x06), 5, "weekday: Sunday is 1")
        XCTAssertEqual(reg(0x0a) & 0x80, 0, "never an update in progress")
        XCTAssertEqual(reg(0x0b) & 0x06, 0x02, "BCD, 24-hour")
        XCTAssertEqual(reg(0x0d), 0x80, "valid")
        rtc.write(offset: 0, value: 0x40)
        rtc.write(offset: 1, value: 0x5a)
        XCTAssertEqual(reg(0x40), 0x5a, "CMOS RAM keeps what is written")
        rtc.write(offset: 0, value: 0x00)
        rtc.write(offset: 1, value: 0x59)
        XCTAssertEqual(reg(0x00), 0x03, "the clock is the host's: writes are ignored")
        XCTAssertEqual(CMOSRTC.civil(fromDays: 0).year, 1970)
        XCTAssertTrue(CMOSRTC.civil(fromDays: 11016) == (2000, 2, 29), "leap day")
    }

    func testBootTimerTakesOnlyTheMagicValue() {
        var booted = 0
        let timer = BootTimer { booted += 1 }
        timer.write(offset: 0, value: 1)
        XCTAssertEqual(booted, 0)
        timer.write(offset: 0, value: 123)
        XCTAssertEqual(booted, 1)
    }

    func testTextWatchFindsThePanicLineAcrossNoise() {
        var watch = TextWatch("Kernel panic - not syncing")
        let text = Array("[ 1.0] KKernel pani Kernel panic - not syncing: Attempted to kill init!".utf8)
        let hits = text.indices.filter { watch.feed(text[$0]) }
        XCTAssertEqual(hits.count, 1)
    }
}
