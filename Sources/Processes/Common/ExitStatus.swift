/// How a vmm run ended, and the exit status that says so. Odd values 1...255 belong to the guest's debug-exit
/// writes ((V << 1) | 1); vmm's own outcomes are even so that the two never collide.
public enum ExitStatus: Equatable, Sendable, CustomStringConvertible {
    /// Every vCPU halted with interrupts off: how Linux powers off (and halts) without ACPI.
    case poweredOff
    /// The config or the command line was refused before anything started.
    case configError
    /// Preparing the VM failed (KVM, guest image, policies, spawning the helpers).
    case hostSetupFailed
    case tripleFault
    /// The vCPU stopped on an exit it cannot handle (emulation failure, failed entry, unknown exit).
    case unhandledExit
    /// A helper process died, or misbehaved on its control pipe, while the guest was running.
    case helperDied
    /// vmm itself failed while the guest was running (a KVM call that should not fail did).
    case runFailed
    /// The guest pulsed the CPU reset line (i8042), as Linux's `reboot` does with `reboot=k`.
    case guestReboot
    /// The guest kernel panicked ("Kernel panic - not syncing" on its console).
    case guestPanic
    case interrupted
    case terminated
    /// The guest wrote V to the debug-exit port: (V << 1) | 1, for V up to 63.
    case guestExit(Int32)
    /// The guest wrote V >= 64 to the debug-exit port: (V << 1) | 1 would be 129 or more, which a shell reads as
    /// "killed by a signal" (71 would give 143, SIGTERM's), so vmm says so and keeps its statuses apart.
    case guestExitOutOfRange(UInt8)

    public var code: Int32 {
        switch self {
        case .poweredOff: return 0
        case .configError: return 2
        case .hostSetupFailed: return 4
        case .tripleFault: return 6
        case .unhandledExit: return 8
        case .helperDied: return 10
        case .runFailed: return 12
        case .guestReboot: return 14
        case .guestPanic: return 16
        case .interrupted: return 130
        case .terminated: return 143
        case .guestExit(let status): return status
        case .guestExitOutOfRange: return 18
        }
    }

    public var description: String {
        switch self {
        case .poweredOff: return "the guest powered off"
        case .configError: return "the config was refused"
        case .hostSetupFailed: return "preparing the VM failed"
        case .tripleFault: return "the guest triple-faulted"
        case .unhandledExit: return "the vCPU stopped on an exit it cannot handle"
        case .helperDied: return "a helper process died"
        case .runFailed: return "vmm failed while the guest ran"
        case .guestReboot: return "the guest rebooted"
        case .guestPanic: return "the guest kernel panicked"
        case .interrupted: return "interrupted (SIGINT)"
        case .terminated: return "terminated (SIGTERM or SIGHUP)"
        case .guestExit(let status): return "the guest exited through debug-exit with \(status)"
        case .guestExitOutOfRange(let v): return "the guest wrote \(v) to debug-exit, beyond the 0...63 that map to statuses below 128"
        }
    }
}
