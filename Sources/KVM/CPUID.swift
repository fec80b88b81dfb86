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

/// Builds the CPUID table a vCPU gets: KVM's supported entries, the per-vCPU fields, the config's template, then
/// what the VMM must hide whatever the template says, and MAXPHYADDR clamped.
public enum CPUIDTable {
    /// What the VMM offers beyond KVM's report, applied before the template (which may hide it again): TSC-deadline
    /// in leaf 1 ECX when the start-up probe showed that IA32_TSC_DEADLINE can be routed to userspace.
    public static func offered(tscDeadline: Bool) -> [CPUIDModifier] {
        tscDeadline ? [CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 0, setMask: 1 << 24)] : []
    }

    /// Hidden because the local APIC lives in the irqchip process, not in KVM: x2APIC (its MSRs fault without an
    /// in-kernel LAPIC) in leaf 1 ECX, and TSC-deadline there too unless `tscDeadline` (otherwise KVM drops the
    /// write); the KVM paravirtual features that need an in-kernel LAPIC in leaf 0x40000001 EAX: PV EOI (6), PV
    /// unhalt (7), PV IPI (11), async page faults delivered as interrupts (14). Only clears: pass it as `enforced`.
    public static func userspaceIRQChip(tscDeadline: Bool) -> [CPUIDModifier] {
        [
            CPUIDModifier(leaf: 1, subleaf: 0, register: .ecx, clearMask: 1 << 21 | (tscDeadline ? 0 : 1 << 24), setMask: 0),
            CPUIDModifier(leaf: 0x4000_0001, subleaf: 0, register: .eax,
                          clearMask: (1 << 6) | (1 << 7) | (1 << 11) | (1 << 14), setMask: 0),
        ]
    }

    /// The largest MAXPHYADDR (leaf 0x80000008 EAX[7:0]) x86-64 defines; page walks compute `(1 << bits) - 1`.
    public static let maxPhysicalAddressBits: UInt32 = 52

    /// `template` (the config's CPU template) is applied after KVM's values and the per-vCPU fields; `enforced` (the
    /// VMM's own masks) after the template, so a template can hide more but never re-enable what the VMM hides.
    /// A MAXPHYADDR above 52 is clamped to 52 (the config parser refuses one; this keeps the vcpu process safe).
    public static func build(supported: [kvm_cpuid_entry2], vcpuID: Int, vcpuCount: Int,
                             template: [CPUIDModifier], enforced: [CPUIDModifier] = []) -> [kvm_cpuid_entry2] {
        supported.map { entry in
            var e = entry
            if e.function == 1 {
                // Initial APIC ID and logical processor count.
                e.ebx = (e.ebx & 0x0000_ffff) | (UInt32(vcpuID) << 24) | (UInt32(max(1, vcpuCount)) << 16)
            }
            if e.function == 0xb || e.function == 0x1f {
                e.edx = UInt32(vcpuID)  // x2APIC ID of this vCPU
            }
            for m in template + enforced where m.leaf == e.function && (m.subleaf == e.index || !indexed(e)) {
                switch m.register {
                case .eax: e.eax = m.apply(e.eax)
                case .ebx: e.ebx = m.apply(e.ebx)
                case .ecx: e.ecx = m.apply(e.ecx)
                case .edx: e.edx = m.apply(e.edx)
                }
            }
            if e.function == 0x8000_0008, e.eax & 0xff > maxPhysicalAddressBits {
                e.eax = (e.eax & ~0xff) | maxPhysicalAddressBits
            }
            return e
        }
    }

    private static func indexed(_ e: kvm_cpuid_entry2) -> Bool {
        e.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0
    }
}
