@testable import Boot
import Memory
import System
import XCTest

/// The Linux boot protocol loader on a synthetic bzImage (a real setup header's fields, a tiny payload).
final class LinuxBootProtocolTests: XCTestCase {
    func makeMemory(_ mib: Int = 64) throws -> GuestMemory {
        let fd = try MemFD.create(name: "boot-test", size: mib << 20)
        let memory = try GuestMemory(fd: fd.raw, size: mib << 20)
        _ = consume fd
        return memory
    }

    /// A bzImage: 2 setup sectors after the boot sector, header version 2.15, 64-bit entry, 32 MiB init_size.
    func bzImage(payload: [UInt8], version: UInt16 = 0x020f, xloadflags: UInt16 = 1) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 3 * 512)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { for i in 0..<(T.bitWidth / 8) { image[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        image[0x1f1] = 2
        put(UInt16(0xaa55), 0x1fe)
        image[0x200] = 0xeb; image[0x201] = 0x66  // jmp over the header: header ends at 0x268
        put(UInt32(0x5372_6448), 0x202)
        put(version, 0x206)
        image[0x211] = 0x01
        put(UInt32(0x7fff_ffff), 0x22c)
        put(UInt32(0x0020_0000), 0x230)
        put(xloadflags, 0x236)
        put(UInt32(2048), 0x238)
        put(UInt64(0x0100_0000), 0x258)
        put(UInt32(0x0200_0000), 0x260)
        return image + payload
    }

    func testBzImageLoadsAtPrefAddressAndFillsTheZeroPage() throws {
        let memory = try makeMemory()
        let payload = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let initrd = Multiboot.Module(bytes: [1, 2, 3, 4, 5], string: "initrd")
        let entry = try GuestLoader.load(kernel: bzImage(payload: payload), cmdline: "console=ttyS0 quiet",
                                         modules: [initrd], into: memory)
        XCTAssertEqual(entry.mode, .long64)
        XCTAssertEqual(entry.rip, 0x0100_0200, "64-bit entry: load address + 0x200")
        XCTAssertEqual(entry.rsi, X86Layout.zeroPage)
        XCTAssertEqual(try memory.read(0x0100_0000, count: payload.count), payload)

        let zp = X86Layout.zeroPage
        XCTAssertEqual(try memory.load(UInt32.self, at: zp + 0x202), 0x5372_6448, "header copied")
        XCTAssertEqual(try memory.load(UInt8.self, at: zp + 0x210), 0xff, "type_of_loader")
        XCTAssertEqual(try memory.load(UInt8.self, at: zp + 0x211) & 1, 1, "LOADED_HIGH")
        let cmdline = UInt64(try memory.load(UInt32.self, at: zp + 0x228))
        XCTAssertEqual(String(decoding: try memory.read(cmdline, count: 19), as: UTF8.self), "console=ttyS0 quiet")
        XCTAssertEqual(try memory.load(UInt8.self, at: cmdline + 19), 0)
        let ramdisk = UInt64(try memory.load(UInt32.self, at: zp + 0x218))
        XCTAssertEqual(try memory.load(UInt32.self, at: zp + 0x21c), 5)
        XCTAssertGreaterThanOrEqual(ramdisk, 0x0100_0000 + 0x0200_0000, "the initrd is past init_size")
        XCTAssertEqual(try memory.read(ramdisk, count: 5), [1, 2, 3, 4, 5])
        // E820: four ranges, the last one RAM from 1 MiB to the end.
        XCTAssertEqual(try memory.load(UInt8.self, at: zp + 0x1e8), 4)
        let last = zp + 0x2d0 + 3 * 20
        XCTAssertEqual(try memory.load(UInt64.self, at: last), 0x10_0000)
        XCTAssertEqual(try memory.load(UInt64.self, at: last + 8), UInt64(64 << 20) - 0x10_0000)
        XCTAssertEqual(try memory.load(UInt32.self, at: last + 16), 1)
        XCTAssertEqual(try memory.load(UInt64.self, at: zp + 0x70), 0, "acpi_rsdp_addr: no ACPI tables unless asked")
    }

    func testTheZeroPageCarriesTheRSDPAddressWhenAsked() throws {
        let memory = try makeMemory()
        _ = try GuestLoader.load(kernel: bzImage(payload: [0x90]), cmdline: "", modules: [], acpiRSDP: ACPIBoot.rsdpAddress, into: memory)
        XCTAssertEqual(try memory.load(UInt64.self, at: X86Layout.zeroPage + 0x70), 0xe_0000, "boot_params.acpi_rsdp_addr")
    }

    func testOldOrNon64BitBzImagesAndOverlongCommandLinesAreRefused() throws {
        let memory = try makeMemory()
        XCTAssertThrowsError(try GuestLoader.load(kernel: bzImage(payload: [0], version: 0x0206), cmdline: "", modules: [], into: memory))
        XCTAssertThrowsError(try GuestLoader.load(kernel: bzImage(payload: [0], xloadflags: 0), cmdline: "", modules: [], into: memory))
        let long = String(repeating: "x", count: 2048)
        XCTAssertThrowsError(try GuestLoader.load(kernel: bzImage(payload: [0]), cmdline: long, modules: [], into: memory)) {
            XCTAssertTrue("\($0)".contains("command line of 2048 bytes"), "\($0)")
        }
        let small = try makeMemory(16)
        XCTAssertThrowsError(try GuestLoader.load(kernel: bzImage(payload: [0]), cmdline: "", modules: [], into: small), "init_size past RAM")
    }

    func testLinuxIsRecognisedAndTestGuestsAreNot() {
        XCTAssertTrue(GuestLoader.isLinux(bzImage(payload: [0])))
        XCTAssertFalse(GuestLoader.isLinux([UInt8](repeating: 0, count: 4096)))
    }
}
