import Foundation
import XCTest

/// A VM whose processes have settled maps little code: each process unmaps the code it ran to start (see
/// StartupCode), which the kernel had mapped in 64 KiB windows around every page it ran.
final class SettledMemoryTests: GuestTestCase {
    /// The file offsets of the pages of vmm's code that process `pid` maps (the present bits of its pagemap).
    private func mappedCodePages(_ pid: pid_t) throws -> Set<Int> {
        let maps = try Harness.procFile("/proc/\(pid)/maps")
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
        let pagemap = open("/proc/\(pid)/pagemap", O_RDONLY)
        guard pagemap >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(pagemap) }
        var pages: Set<Int> = []
        for line in maps.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, f[1] == "r-xp", f[5...].joined(separator: " ") == executable else { continue }
            let range = f[0].split(separator: "-").compactMap { Int($0, radix: 16) }
            guard range.count == 2, let offset = Int(f[2], radix: 16) else { continue }
            var entries = [UInt64](repeating: 0, count: (range[1] - range[0]) / 4096)
            let bytes = entries.withUnsafeMutableBytes { pread(pagemap, $0.baseAddress, $0.count, off_t(range[0] / 4096 * 8)) }
            XCTAssertEqual(bytes, entries.count * 8)
            for (i, e) in entries.enumerated() where e >> 63 == 1 { pages.insert(offset + i * 4096) }
        }
        return pages
    }

    func testASettledStandbyAndDeviceMapUnderHalfOfTheCodeTheVMMaps() throws {
        guard geteuid() == 0 else { throw XCTSkip("SKIPPED: reading other processes' pagemaps needs root here") }
        let run = try startEndlessGuest()
        defer { kill(run.process.processIdentifier, SIGTERM); _ = run.wait() }
        let supervisor = run.process.processIdentifier
        let helpers = Harness.settledHelpers(of: supervisor, count: 5)  // vcpu, pio, irqchip and two standbys
        // Devices settle 250 ms after they begin serving, the supervisor and the launcher once the standbys are up.
        usleep(1_500_000)
        var all = try mappedCodePages(supervisor)
        var each: [(role: String, standby: Bool, pages: Int)] = []
        for pid in helpers {
            let pages = try mappedCodePages(pid)
            all.formUnion(pages)
            each.append((Harness.role(of: pid) ?? "?", Harness.isStandby(pid), pages.count))
        }
        let report = "of \(all.count) pages of vmm's code mapped in the VM: " + each.map { "\($0.role)\($0.standby ? " (standby)" : "") \($0.pages)" }.joined(separator: ", ")
        XCTAssertGreaterThan(all.count, 0, report)
        XCTAssertTrue(each.contains { $0.standby }, report)
        XCTAssertTrue(each.contains { $0.role == "pio" && !$0.standby }, report)
        // Before each process settled, each mapped about nine tenths of it (what the launcher they are forked from
        // had mapped, and their own start-up).
        for p in each where p.role != "vcpu" {
            XCTAssertLessThan(p.pages * 2, all.count, report)
        }
    }
}
