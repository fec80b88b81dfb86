import Boot
import Glibc

/// What a PVM-style host KVM (the `kvm_pvm` module: guest kernel mode runs in the host's instruction emulator)
/// needs from the VMM, chosen once at start like KVM's own `kvm_x86_ops`, and applied without the user knowing
/// the list. On hardware-backed KVM none of it applies.
struct HostQuirks {
    /// CPUID bits masked after the config's template (it cannot undo them): CX16 (leaf 1 ECX bit 13), because the
    /// emulator cannot run `lock cmpxchg16b` (Linux's SLUB uses it when offered).
    let cpuidMasks: [CPUIDRuleSpec] = [CPUIDRuleSpec(leaf: 1, subleaf: 0, register: "ecx", clear: 1 << 13, set: 0)]
    /// Kernel options for features the host forces back on in CPUID, so masking cannot hide them:
    /// `noxsave` (the emulator cannot run XRSTOR), `clearcpuid=` POPCNT (151), SMAP (308: CLAC on every interrupt
    /// entry) and SSSE3 (137: LDMXCSR in SSSE3 code), and `nofsgsbase` (the FS base is lost across context
    /// switches with FSGSBASE).
    let linuxCommandLine = ["noxsave", "clearcpuid=151,308,137", "nofsgsbase"]
    /// The vcpu process rewinds user-mode SYSCALLs that the host leaves at CPL3 (see SyscallFixup).
    let syscallFixup = true

    /// `cmdline` with the kernel options added before a "--" (what follows it belongs to init).
    func addingLinuxOptions(to cmdline: String) -> String {
        KernelCommandLine.inserting(linuxCommandLine, into: cmdline)
    }

    /// The host's quirks, or nil on a host that needs none (or when the config turned them off).
    static func detect(enabled: Bool) -> HostQuirks? {
        guard enabled, access("/sys/module/kvm_pvm", F_OK) == 0 else { return nil }
        return HostQuirks()
    }

    var summary: String {
        "PVM-style host KVM (kvm_pvm): masking CPUID CX16, adding \"\(linuxCommandLine.joined(separator: " "))\" to a Linux "
            + "command line, rewinding user-mode SYSCALLs; vmm.host_quirks = \"off\" turns this off"
    }
}
