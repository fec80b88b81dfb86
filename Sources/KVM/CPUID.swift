import CKVM

/// One change to a CPUID register (a Firecracker custom CPU template entry): bits in `clearMask` are forced
/// to 0, bits in `setMask` to 1, every other bit keeps what KVM reports.
public struct CPUIDModifier: Equatable, Sendable {
    public enum Register: String, Sendable, CaseIterable { case eax, ebx, ecx, edx }
    public let leaf: UInt32
    public let subleaf: UInt32
    public let register: Register
    public let clearMask: UInt32
    public let setMask: UInt32

    public init(leaf: UInt32, subleaf: UInt32, register: Register, clearMask: UInt32, setMask: UInt32) {
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.clearMask = clearMask
        self.setMask = setMask
    }

    func apply(_ value: UInt32) -> UInt32 { (value & ~clearMask) | setMask }
}

/// Builds the CPUID table a vCPU gets: KVM's supported entries, the per-vCPU fields, what a userspace local APIC
/// cannot back, then the config's template.
public enum CPUIDTable {
    /// Hidden because the local APIC lives in the irqchip process, not in KVM: x2APIC (its MSRs fault without an
    /// in-kernel LAPIC) in leaf 1 ECX, and TSC-deadline there too unless `tscDeadline` (the start-up probe showed
    /// that IA32_TSC_DEADLINE can be routed to userspace; otherwise KVM drops the write); the KVM paravirtual
    /// features that need an in-kernel LAPIC in leaf 0x40000001 EAX: PV EOI (6), PV unhalt (7), PV IPI (11),
    /// async page faults delivered as interrupts (14).
    public static func userspaceIRQChip(tscDeadline: Bool) -> [CPUIDModifier] {
        [
            CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 1 << 21 | (tscDeadline ? 0 : 1 << 24),
                          setMask: tscDeadline ? 1 << 24 : 0),
            CPUIDModifier(leaf: 0x4000_0001, subleaf: 0, register: .eax,
                          clearMask: (1 << 6) | (1 << 7) | (1 << 11) | (1 << 14), setMask: 0),
        ]
    }

    public static func build(supported: [kvm_cpuid_entry2], vcpuID: Int, vcpuCount: Int,
                             template: [CPUIDModifier]) -> [kvm_cpuid_entry2] {
        supported.map { entry in
            var e = entry
            if e.function == 1 {
                // Initial APIC ID and logical processor count.
                e.ebx = (e.ebx & 0x0000_ffff) | (UInt32(vcpuID) << 24) | (UInt32(max(1, vcpuCount)) << 16)
            }
            if e.function == 0xb || e.function == 0x1f {
                e.edx = UInt32(vcpuID)  // x2APIC ID of this vCPU
            }
            for m in template where m.leaf == e.function && (m.subleaf == e.index || !indexed(e)) {
                switch m.register {
                case .eax: e.eax = m.apply(e.eax)
                case .ebx: e.ebx = m.apply(e.ebx)
                case .ecx: e.ecx = m.apply(e.ecx)
                case .edx: e.edx = m.apply(e.edx)
                }
            }
            return e
        }
    }

    private static func indexed(_ e: kvm_cpuid_entry2) -> Bool {
        e.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0
    }
}
