import CKVM
import KVM
import XCTest

final class CPUIDTests: XCTestCase {
    func entry(_ f: UInt32, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = f; e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }

    func testUserspaceIRQChipHidesX2APICTSCDeadlineAndPVFeatures() {
        let table = CPUIDTable.build(supported: [entry(1, ecx: 0xffff_ffff), entry(0x4000_0001, eax: 0xffff_ffff)],
                                     vcpuID: 0, vcpuCount: 1, template: CPUIDTable.userspaceIRQChip(tscDeadline: false))
        XCTAssertEqual(table[0].ecx & (1 << 21), 0, "x2APIC")
        XCTAssertEqual(table[0].ecx & (1 << 24), 0, "TSC-deadline")
        XCTAssertEqual(table[0].ecx | (1 << 21) | (1 << 24), 0xffff_ffff, "nothing else")
        for bit in [6, 7, 11, 14] { XCTAssertEqual(table[1].eax & (1 << UInt32(bit)), 0, "PV feature bit \(bit)") }
    }

    func testTSCDeadlineIsOfferedWhenTheProbeSucceeded() {
        let table = CPUIDTable.build(supported: [entry(1, ecx: 0)], vcpuID: 0, vcpuCount: 1,
                                     template: CPUIDTable.offered(tscDeadline: true), enforced: CPUIDTable.userspaceIRQChip(tscDeadline: true))
        XCTAssertEqual(table[0].ecx, 1 << 24, "TSC-deadline set, x2APIC still clear")
    }

    /// A config's template comes after what the VMM offers (it may hide TSC-deadline) and before what the VMM
    /// must hide (it cannot re-enable x2APIC, TSC-deadline without the probe, or the PV features).
    func testATemplateCannotReEnableWhatTheVMMHides() {
        let setAll = [CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 0, setMask: 1 << 21 | 1 << 24),
                      CPUIDModifier(leaf: 0x4000_0001, subleaf: 0, register: .eax, clearMask: 0, setMask: 0xffff_ffff)]
        for probe in [false, true] {
            let t = CPUIDTable.build(supported: [entry(1), entry(0x4000_0001)], vcpuID: 0, vcpuCount: 1,
                                     template: CPUIDTable.offered(tscDeadline: probe) + setAll,
                                     enforced: CPUIDTable.userspaceIRQChip(tscDeadline: probe))
            XCTAssertEqual(t[0].ecx & (1 << 21), 0, "x2APIC stays hidden")
            XCTAssertEqual(t[0].ecx & (1 << 24) != 0, probe, "TSC-deadline only when the probe succeeded")
            for bit in [6, 7, 11, 14] { XCTAssertEqual(t[1].eax & (1 << UInt32(bit)), 0, "PV feature bit \(bit)") }
        }
        let hideTSCDeadline = CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 1 << 24, setMask: 0)
        let t = CPUIDTable.build(supported: [entry(1)], vcpuID: 0, vcpuCount: 1,
                                 template: CPUIDTable.offered(tscDeadline: true) + [hideTSCDeadline],
                                 enforced: CPUIDTable.userspaceIRQChip(tscDeadline: true))
        XCTAssertEqual(t[0].ecx & (1 << 24), 0, "a template may hide what the VMM offers")
    }

    func testMaxPhysicalAddressIsClampedTo52Bits() {
        let wide = CPUIDModifier(leaf: 0x8000_0008, subleaf: 0, register: .eax, clearMask: 0xff, setMask: 64)
        let t = CPUIDTable.build(supported: [entry(0x8000_0008, eax: 0x3028)], vcpuID: 0, vcpuCount: 1, template: [wide])
        XCTAssertEqual(t[0].eax, 0x3034, "MAXPHYADDR 52, the virtual-address width (0x30) kept")
        let host = CPUIDTable.build(supported: [entry(0x8000_0008, eax: 0x3028)], vcpuID: 0, vcpuCount: 1, template: [])
        XCTAssertEqual(host[0].eax, 0x3028, "a valid width is left alone")
    }

    func testTemplateAndPerVCPUFields() {
        let t = CPUIDTable.build(supported: [entry(1, ebx: 0x0000_0800, ecx: 0)], vcpuID: 3, vcpuCount: 4,
                                 template: [CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 0, setMask: 1 << 31)])
        XCTAssertEqual(t[0].ebx >> 24, 3, "initial APIC ID")
        XCTAssertEqual((t[0].ebx >> 16) & 0xff, 4, "logical processors")
        XCTAssertEqual(t[0].ecx, 1 << 31)
    }
}
