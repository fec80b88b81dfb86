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
    ///
    /// And one for user space, which the kernel hands to init as an environment variable (inherited by every
    /// process): guest user mode runs natively here, with the host's XCR0 and with CPUID and XGETBV answered by
    /// the host's CPU, so AVX, AVX2 and AVX-512 look usable to a program; but the guest kernel (with `noxsave`)
    /// saves and restores only x87 and SSE state, so a process's YMM/ZMM registers are lost across exits and task
    /// switches. glibc chooses memcpy, strlen and friends by CPUID: its EVEX memcpy lost the TLS block it copied
    /// at start-up in about one of five new processes (they died with "segfault at 0" in `__ctype_init`). The
    /// tunable turns its AVX variants off; programs that use AVX by themselves are not covered (README).
    let linuxCommandLine = ["noxsave", "clearcpuid=151,308,137", "nofsgsbase", Self.glibcTunables]
    static let glibcTunables = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-AVX_Fast_Unaligned_Load"
    /// The vcpu process rewinds user-mode SYSCALLs that the host leaves at CPL3 (see SyscallFixup).
    let syscallFixup = true
    /// The vCPU single-steps while a vector waits for a window: this host's KVM honours request_interrupt_window
    /// late or not at all, and a MOV to CR8 does not exit (see WindowStepper). A hardware-backed KVM reports the
    /// window itself, so stepping there would only cost exits.
    let windowStepping = true

    /// `cmdline` with the kernel options added before a "--" (what follows it belongs to init).
    func addingLinuxOptions(to cmdline: String) -> String {
        KernelCommandLine.inserting(linuxCommandLine, into: cmdline)
    }

    /// The host's quirks, or nil on a host that needs none (or when the config turned them off).
    static func detect(enabled: Bool) -> HostQuirks? {
        guard enabled, access("/sys/module/kvm_pvm", F_OK) == 0 else { return nil }
        return HostQuirks()
    }

    /// (Reduced, not joined: see MachineLayout.virtioCommandLine.)
    var summary: String {
        "PVM-style host KVM (kvm_pvm): masking CPUID CX16, adding \"\(linuxCommandLine.dropLast().reduce("") { $0.isEmpty ? $1 : $0 + " " + $1 })\" and "
            + "glibc tunables without AVX to a Linux command line, rewinding user-mode SYSCALLs, stepping for interrupt windows; vmm.host_quirks = \"off\" turns this off"
    }
}
