@testable import Boot
import Memory
import System
import XCTest

/// Kernel images written by an attacker: every field the loaders compute with is pushed to where an unchecked
/// addition or subtraction would trap. Each must be refused with a BootError; a trap would crash the supervisor.
final class HostileImageTests: XCTestCase {
    func makeMemory(_ mib: Int = 64) throws -> GuestMemory {
        let fd = try MemFD.create(name: "hostile-boot-test", size: mib << 20)
        let memory = try GuestMemory(fd: fd.raw, size: mib << 20)
        _ = consume fd
        return memory
    }

    /// A minimal bzImage (protocol 2.15, 64-bit entry) with the fields under test set as given.
    func bzImage(prefAddress: UInt64 = 0x0100_0000, initSize: UInt32 = 0x0200_0000, cmdlineSize: UInt32 = 2048) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 3 * 512)
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { for i in 0..<(T.bitWidth / 8) { image[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        image[0x1f1] = 2
        put(UInt16(0xaa55), 0x1fe)
        image[0x200] = 0xeb; image[0x201] = 0x66
        put(UInt32(0x5372_6448), 0x202)
        put(UInt16(0x020f), 0x206)
        image[0x211] = 0x01
        put(UInt32(0x7fff_ffff), 0x22c)
        put(UInt16(1), 0x236)
        put(cmdlineSize, 0x238)
        put(prefAddress, 0x258)
        put(initSize, 0x260)
        return image + [0x90, 0x90, 0x90, 0x90]
    }

    func assertRefused(_ kernel: [UInt8], cmdline: String = "", _ expected: String,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let memory = try makeMemory()
        XCTAssertThrowsError(try GuestLoader.load(kernel: kernel, cmdline: cmdline, modules: [], into: memory),
                             file: file, line: line) { error in
            XCTAssertTrue(error is BootError, "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(expected), "\(error)", file: file, line: line)
        }
    }

    func testPrefAddressNearTheTopOfTheAddressSpaceIsRefused() throws {
        // pref_address + init_size wraps past 2^64: today's unchecked addition traps.
        try assertRefused(bzImage(prefAddress: 0xffff_ffff_ffff_f000), "pref_address")
        try assertRefused(bzImage(prefAddress: UInt64.max), "pref_address")
        // Just below the wrap: no overflow, but far outside RAM.
        try assertRefused(bzImage(prefAddress: 0xffff_ffff_0000_0000), "does not fit")
    }

    func testZeroCmdlineSizeIsRefused() throws {
        // cmdline_size 0: the kernel takes no command line at all, not even the terminating NUL; today's message
        // computes cmdline_size - 1 and traps.
        try assertRefused(bzImage(cmdlineSize: 0), "cmdline_size")
        try assertRefused(bzImage(cmdlineSize: 0), cmdline: "console=ttyS0", "cmdline_size")
        // The boundary: cmdline_size 1 leaves room for the NUL only: "" loads, anything longer is refused.
        let memory = try makeMemory()
        XCTAssertNoThrow(try GuestLoader.load(kernel: bzImage(cmdlineSize: 1), cmdline: "", modules: [], into: memory))
        try assertRefused(bzImage(cmdlineSize: 1), cmdline: "x", "at most 0")
    }
}
