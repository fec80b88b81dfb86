@testable import ACPI
import XCTest

/// The AML encoder against known encodings: bytes iasl 20200925 (Debian's acpica-tools) produced for the same
/// ASL (with `-oa`, no optimisations, where a root-relative path is involved), and QEMU's microvm DSDT.
final class AMLTests: XCTestCase {
    func testQEMUMicrovmVirtioDevice() {
        // QEMU's tests/data/acpi/microvm/DSDT: Device (VR07), virtio-mmio at 0xFEB00E00 (512 bytes), GSI 23, as
        // acpi_dsdt_add_virtio writes it (Level, ActiveHigh, Exclusive); the bytes are iasl's compilation of it.
        let device = AMLTerm.device("VR07", [
            .name("_HID", .string("LNRO0005")),
            .name("_UID", .integer(7)),
            .name("_CCA", .integer(1)),
            .name("_CRS", .resourceTemplate([
                .memory32Fixed(writable: true, base: 0xfeb0_0e00, length: 0x200),
                .interrupt(trigger: .level, polarity: .activeHigh, shared: false, gsi: 0x17),
            ])),
        ])
        XCTAssertEqual(device.encoded, [
            0x5b, 0x82, 0x42, 0x04, 0x56, 0x52, 0x30, 0x37, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x4c, 0x4e,
            0x52, 0x4f, 0x30, 0x30, 0x30, 0x35, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x0a, 0x07, 0x08, 0x5f,
            0x43, 0x43, 0x41, 0x01, 0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x1a, 0x0a, 0x17, 0x86, 0x09, 0x00,
            0x01, 0x00, 0x0e, 0xb0, 0xfe, 0x00, 0x02, 0x00, 0x00, 0x89, 0x06, 0x00, 0x01, 0x01, 0x17, 0x00,
            0x00, 0x00, 0x79, 0x00,
        ])
    }

    func testNamePaths() {
        XCTAssertEqual(NamePath(validating: "\\_SB_")?.encoded, [0x5c, 0x5f, 0x53, 0x42, 0x5f])
        XCTAssertEqual(NamePath(validating: "\\_SB.ABCD")?.encoded, [0x5c, 0x2e] + Array("_SB_ABCD".utf8), "DualNamePrefix, _SB padded")
        XCTAssertEqual(NamePath(validating: "\\_SB_.ABCD.EFGH.IJKL")?.encoded, [0x5c, 0x2f, 0x04] + Array("_SB_ABCDEFGHIJKL".utf8))
        XCTAssertEqual(NamePath(validating: "COM1")?.encoded, Array("COM1".utf8))
        XCTAssertNil(NamePath(validating: "\\"))
        XCTAssertNil(NamePath(validating: "_SB_..X"))
        XCTAssertNil(NameSeg(validating: "1ABC"), "a name may not start with a digit")
        XCTAssertNil(NameSeg(validating: "abcd"), "lower case is not a name character")
        XCTAssertNil(NameSeg(validating: "ABCDE"))
        XCTAssertEqual(NameSeg(validating: "_SB")?.bytes, Array("_SB_".utf8))
    }

    func testIntegersTakeTheSmallestEncoding() {
        // iasl -oa: Name (_UID, 0xFFFF), Name (INT1, 0x12345), Name (INT2, 0x123456789), Name (INT3, 0x100).
        XCTAssertEqual(AMLData.integer(0).encoded, [0x00], "ZeroOp")
        XCTAssertEqual(AMLData.integer(1).encoded, [0x01], "OneOp")
        XCTAssertEqual(AMLData.integer(2).encoded, [0x0a, 0x02])
        XCTAssertEqual(AMLData.integer(0xff).encoded, [0x0a, 0xff])
        XCTAssertEqual(AMLData.integer(0x100).encoded, [0x0b, 0x00, 0x01])
        XCTAssertEqual(AMLData.integer(0xffff).encoded, [0x0b, 0xff, 0xff])
        XCTAssertEqual(AMLData.integer(0x12345).encoded, [0x0c, 0x45, 0x23, 0x01, 0x00])
        XCTAssertEqual(AMLData.integer(0x1_2345_6789).encoded, [0x0e, 0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00])
    }

    func testStringsAndEISAIDs() {
        XCTAssertEqual(AMLData.string("").encoded, [0x0d, 0x00])
        XCTAssertEqual(AMLData.string("LNRO0005").encoded, [0x0d] + Array("LNRO0005".utf8) + [0])
        XCTAssertNil(AMLString(validating: "caf\u{e9}"), "AML strings are ASCII")
        // iasl: EisaId ("PNP0501") and EisaId ("PNP0B00").
        XCTAssertEqual(AMLData.eisaID("PNP0501").encoded, [0x0c, 0x41, 0xd0, 0x05, 0x01])
        XCTAssertEqual(AMLData.eisaID("PNP0B00").encoded, [0x0c, 0x41, 0xd0, 0x0b, 0x00])
        XCTAssertNil(EISAID(validating: "PNP050"))
        XCTAssertNil(EISAID(validating: "pnp0501"))
        XCTAssertNil(EISAID(validating: "PNP05G1"))
    }

    func testPkgLengthOneToFourBytes() {
        // iasl: Buffer (0x3C) {...} has a 62-byte payload and a 1-byte PkgLength of 0x3F; Buffer (0x3D) {...}
        // needs two bytes, 0x41 0x04 (65).
        XCTAssertEqual(AML.pkgLength(62), [0x3f])
        XCTAssertEqual(AML.pkgLength(63), [0x41, 0x04])
        XCTAssertEqual(AML.buffer([UInt8](repeating: 0x11, count: 0x3c)).prefix(4), [0x11, 0x3f, 0x0a, 0x3c])
        XCTAssertEqual(AML.buffer([UInt8](repeating: 0x11, count: 0x3d)).prefix(5), [0x11, 0x41, 0x04, 0x0a, 0x3d])
        XCTAssertEqual(AML.pkgLength(0), [0x01])
        XCTAssertEqual(AML.pkgLength(0xffd), [0x4f, 0xff], "0xFFF in all: the most two bytes hold")
        XCTAssertEqual(AML.pkgLength(0xffe), [0x81, 0x00, 0x01], "0x1001 in all with three bytes")
        XCTAssertEqual(AML.pkgLength(0xf_fffc), [0x8f, 0xff, 0xff], "0xFFFFF: the most three bytes hold")
        XCTAssertEqual(AML.pkgLength(0xf_fffd), [0xc1, 0x00, 0x00, 0x01], "0x100001 in all with four bytes")
    }

    func testScopeAndNestedDevicesMatchIasl() {
        // iasl -oa:
        //   Scope (\_SB) { Device (ABCD) { Name (_HID, "ABCD0001") Name (_UID, 0xFFFF)
        //       Device (EFGH) { Name (_HID, "ABCD0001") Device (IJKL) { Name (_HID, "ABCD0001") } } } }
        // The outer scope's PkgLength takes two bytes (0x52 in all).
        let hid = AMLTerm.name("_HID", .string("ABCD0001"))
        let scope = AMLTerm.scope("\\_SB_", [
            .device("ABCD", [hid, .name("_UID", .integer(0xffff)), .device("EFGH", [hid, .device("IJKL", [hid])])]),
        ])
        XCTAssertEqual(scope.encoded, [
            0x10, 0x42, 0x05, 0x5c, 0x5f, 0x53, 0x42, 0x5f, 0x5b, 0x82, 0x49, 0x04, 0x41, 0x42, 0x43, 0x44,
            0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x41, 0x42, 0x43, 0x44, 0x30, 0x30, 0x30, 0x31, 0x00, 0x08,
            0x5f, 0x55, 0x49, 0x44, 0x0b, 0xff, 0xff, 0x5b, 0x82, 0x2a, 0x45, 0x46, 0x47, 0x48, 0x08, 0x5f,
            0x48, 0x49, 0x44, 0x0d, 0x41, 0x42, 0x43, 0x44, 0x30, 0x30, 0x30, 0x31, 0x00, 0x5b, 0x82, 0x14,
            0x49, 0x4a, 0x4b, 0x4c, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x41, 0x42, 0x43, 0x44, 0x30, 0x30,
            0x30, 0x31, 0x00,
        ])
    }

    func testResourceDescriptors() {
        // IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08); Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {4}.
        XCTAssertEqual(ResourceDescriptor.io(base: 0x3f8, alignment: 1, length: 8).encoded, [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08])
        XCTAssertEqual(ResourceDescriptor.interrupt(trigger: .edge, polarity: .activeHigh, shared: false, gsi: 4).encoded,
                       [0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00])
        XCTAssertEqual(ResourceDescriptor.interrupt(trigger: .level, polarity: .activeLow, shared: true, gsi: 0x1_0000).encoded,
                       [0x89, 0x06, 0x00, 0x0d, 0x01, 0x00, 0x00, 0x01, 0x00])
        XCTAssertEqual(ResourceDescriptor.memory32Fixed(writable: false, base: 0xd000_0000, length: 0x1000).encoded,
                       [0x86, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00])
        XCTAssertEqual(AMLData.resourceTemplate([]).encoded, [0x11, 0x05, 0x0a, 0x02, 0x79, 0x00], "only the end tag")
    }
}
