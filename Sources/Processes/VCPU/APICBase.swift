/// IA32_APIC_BASE (MSR 0x1b) as the vcpu process follows it. Without an in-kernel local APIC, KVM applies the
/// guest's WRMSR itself (reserved bits, the CPUID APIC bit) without an exit, and reports the value in
/// kvm_run.apic_base after every exit; the vCPU compares it with what it last saw, before it handles the exit.
struct APICBase {
    static let globalEnable: UInt64 = 1 << 11
    /// The page's address bits (12-51).
    static let pageMask: UInt64 = 0x000f_ffff_ffff_f000

    /// What the routing depends on: the page and the enable bit (not the BSP flag).
    private var known: UInt64 = 0xfee0_0000 | APICBase.globalEnable

    /// The new value, if `reported` moves or disables or enables the APIC.
    @inline(__always)
    mutating func change(reported: UInt64) -> UInt64? {
        let relevant = reported & (Self.pageMask | Self.globalEnable)
        guard relevant != known else { return nil }
        known = relevant
        return reported
    }
}
