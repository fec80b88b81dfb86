import CLinux
import Channel
import Glibc
import Machine
import System

/// What every helper process does first: name itself (in its log lines and for `ps`: its executable is
/// /proc/self/exe, exec'd or forked) and stop reacting to the terminal's signals (the supervisor handles Ctrl-C for
/// everyone). Dying with the supervisor was arranged at the clone (see vmm_spawn, vmm_fork_blank).
public enum HelperStartup {
    /// A helper's whole life, exec'd (`vmm _role ROLE SPEC`) or forked by the launcher: its role's code with its
    /// spec (JSON). Returns the exit status.
    public static func run(_ role: Role, spec: String) -> Int32 {
        switch role {
        case .vcpu: VCPUProcess.main(specJSON: spec)
        case .pio: PIOProcess.main(specJSON: spec)
        case .irqchip: IRQChipProcess.main(specJSON: spec)
        case .virtioBlock, .virtioNet, .virtioVsock, .virtioRNG: VirtioProcess.main(role: role, specJSON: spec)
        }
    }

    /// In the launcher, once per role: decodes a spec as the role's helper does, and drops it. The type metadata,
    /// conformances and witness tables the runtime looks up and caches on the way are then in the launcher's memory,
    /// which every helper it forks afterwards (standbys, restarts) shares, instead of in a copy of each helper's own.
    static func rehearse(_ role: Role, spec: String) {
        switch role {
        case .vcpu: _ = try? VCPUSpec.decode(spec)
        case .pio: _ = try? PIOSpec.decode(spec)
        case .irqchip: _ = try? IRQChipSpec.decode(spec)
        case .virtioBlock, .virtioNet, .virtioVsock, .virtioRNG: _ = try? VirtioSpec.decode(spec)
        }
    }

    static func begin(role: Role, logLevel: Int) {
        Log.role = role.rawValue
        Log.level = Log.Level(rawValue: logLevel) ?? .warning
        Log.takeFormatFromEnvironment()
        role.processName.withCString { _ = vmm_prctl5(VMM_PR_SET_NAME, UInt(bitPattern: $0), 0, 0, 0) }
        Signals.ignore([SIGINT, SIGQUIT, SIGTSTP, SIGPIPE])
    }

    /// A device role's whole life: decode its arguments (status 2 if they are bad), begin, then `body` (which
    /// enters the sandbox and serves); an error ends the process with status 1 after logging it.
    static func runDevice<Spec: RoleSpec>(_ type: Spec.Type, json: String, role: Role,
                                          _ body: (Spec) throws -> Void) -> Int32 {
        guard let spec = try? Spec.decode(json) else {
            Log.error("bad role arguments")
            return 2
        }
        begin(role: role, logLevel: spec.logLevel)
        Log.debug("started")
        do {
            try body(spec)
            return 0
        } catch {
            Log.error("\(error)")
            return 1
        }
    }
}

extension HelperStartup {
    /// A standby process, started and sandboxed ahead of need, waits here until its predecessor is gone. It must not
    /// have looked at its channels yet: ring positions are read when it starts serving, not before.
    static func awaitTakeover(_ fd: Int32) throws {
        Log.debug("standing by")
        // Its start-up is over; the code of its serving comes back at the takeover.
        StartupCode.release()
        _ = try Poll.wait([fd], timeoutMs: -1)
        var value: UInt64 = 0
        _ = Glibc.read(fd, &value, 8)
        Log.debug("taking over")
    }
}

extension ChannelSpec {
    var layout: ChannelLayout { ChannelLayout(lanes: lanes, capacity: capacity, stateSize: stateSize) }
}

extension WaitingSpec {
    /// The policy for the waiter in seat `seat + offset` (a vCPU's index; 0 for a device process). `stepsAside`:
    /// device processes, which move off a CPU a vCPU holds instead of blocking there (see `SpinCensus.seat`).
    func policy(census: SpinCensus, offset: Int = 0, stepsAside: Bool = false) -> WaitPolicy {
        WaitPolicy(maxSpinMicroseconds: maxSpinMicroseconds, census: census.seat(seat + offset, stepsAside: stepsAside))
    }

    func attachCensus() throws -> SpinCensus { try SpinCensus(attaching: censusFD) }
}
