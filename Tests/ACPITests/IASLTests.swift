@testable import ACPI
import Foundation
import XCTest

/// The tables through ACPICA's own tools (Debian's acpica-tools, `tools/install-deps` installs it): `iasl -d`
/// must disassemble each without an error or a complaint, and the disassembled ASL, compiled again, must give
/// back our bytes. Skipped, loudly, where iasl is not installed.
final class IASLTests: XCTestCase {
    func iasl() throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map { "\($0)/iasl" }
        guard let found = path.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            let why = "iasl is not installed (apt-get install acpica-tools, or tools/install-deps): the ACPI tables are NOT checked by ACPICA's disassembler"
            print("warning: SKIPPED: \(why)")
            throw XCTSkip(why)
        }
        return found
    }

    /// Runs iasl with `arguments` in `directory`; returns its exit status and what it printed.
    func run(_ iasl: String, _ arguments: [String], in directory: URL) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: iasl)
        p.arguments = arguments
        p.currentDirectoryURL = directory
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func testIaslDisassemblesEveryTableAndRecompilesTheDSDTToOurBytes() throws {
        let iasl = try iasl()
        let devices = (0..<3).map { VirtioMMIODevice(base: 0xd000_0000 + UInt64($0) * 0x1000, gsi: 5 + UInt32($0)) }
        let tables = try ACPITables.build(vcpuCount: 4, ioapicID: 4, virtioDevices: devices)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("acpi-iasl-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var keep = false
        defer { if !keep { try? FileManager.default.removeItem(at: dir) } }

        for signature in ["DSDT", "FACP", "APIC", "XSDT"] {
            let table = try XCTUnwrap(tables.table(signature))
            let name = signature.lowercased()
            try Data(table.bytes).write(to: dir.appendingPathComponent("\(name).dat"))
            let (status, output) = try run(iasl, ["-d", "\(name).dat"], in: dir)
            let dsl = (try? String(contentsOf: dir.appendingPathComponent("\(name).dsl"), encoding: .utf8)) ?? ""
            XCTAssertEqual(status, 0, "iasl -d \(name).dat:\n\(output)")
            XCTAssertFalse(output.contains("Error") || output.contains("Warning"), "iasl -d \(name).dat:\n\(output)")
            // The disassembler marks what it cannot make sense of in the listing: a short or long table, a bad
            // checksum, an unknown subtable.
            for complaint in ["****", "Invalid", "Unknown", "Error", "Incorrect checksum"] {
                XCTAssertFalse(dsl.contains(complaint), "\(name).dsl says \"\(complaint)\" (kept in \(dir.path)):\n\(dsl)")
            }
            if status != 0 || dsl.isEmpty { keep = true }

            switch signature {
            case "DSDT":
                XCTAssertEqual(dsl.components(separatedBy: "\"LNRO0005\"").count - 1, 3, dsl)
                for i in 0..<3 { XCTAssertTrue(dsl.contains("Device (V00\(i))"), dsl) }
                XCTAssertTrue(dsl.contains("EisaId (\"PNP0501\")"), dsl)
                XCTAssertTrue(dsl.contains("Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )"), dsl)
                // Compile the listing again, without optimisations (which would drop the `\` of `\_SB`): the
                // AML must be ours, byte for byte.
                let (cstatus, coutput) = try run(iasl, ["-oa", "-p", "again", "dsdt.dsl"], in: dir)
                XCTAssertEqual(cstatus, 0, coutput)
                let again = try [UInt8](Data(contentsOf: dir.appendingPathComponent("again.aml")))
                XCTAssertEqual(Array(again.dropFirst(36)), Array(table.bytes.dropFirst(36)), "the recompiled AML")
            case "FACP":
                XCTAssertTrue(dsl.contains("Hardware Reduced (V5) : 1"), dsl)
                XCTAssertTrue(dsl.contains("VGA Not Present (V4) : 1"), dsl)
                XCTAssertTrue(dsl.contains("CMOS RTC Not Present (V5) : 0"), dsl)
                XCTAssertTrue(dsl.contains("Hypervisor ID : 54464957534D4D56"), "\"VMMSWIFT\" read as a little-endian UInt64:\n\(dsl)")
            case "APIC":
                XCTAssertEqual(dsl.components(separatedBy: "[Processor Local APIC]").count - 1, 4, dsl)
                XCTAssertEqual(dsl.components(separatedBy: "[I/O APIC]").count - 1, 1, dsl)
                XCTAssertEqual(dsl.components(separatedBy: "[Local APIC NMI]").count - 1, 1, dsl)
            default:
                break
            }
            print("iasl -d \(name).dat: \(status == 0 ? "ok" : "FAILED"), \(dsl.count) characters of listing")
        }
    }
}
