import CKVM
import CLinux
import Glibc
import Machine
import Sandbox
import SeccompPolicy
import System

/// How a helper is confined, as the supervisor decided it: its policy, the seccomp mode, the unprivileged ids, and
/// a test-only fault to provoke once confined.
struct SandboxSpec: Codable {
    var policyName: String
    /// The policy's text (includes expanded) when it is not the role's built-in one (`vmm run --unsafe-policy-dir`);
    /// nil for the built-in policy, whose program is compiled into vmm (BuiltinPolicies). Not sent by default: each
    /// copy of the text in the spec stayed in the helper's heap for its life.
    var policyText: String?
    var mode: SeccompFilter.Mode
    /// The unprivileged ids to switch to; nil in a user namespace, where the helper keeps the user's own ids.
    var uid: UInt32?
    var gid: UInt32?
    /// Test hook: a forbidden system call (openat, socket, execve, ptrace) the helper makes once sandboxed.
    var faultSyscall: String?
    /// Fault injection ("crash" in `vmm.fault_injection`): SIGUSR1 makes the helper crash with a real SIGSEGV.
    var crashOnSignal = false
    /// RLIMIT_AS: what the role maps (guest RAM for the vcpu and virtio processes) and room for its runtime.
    var addressSpaceLimit: UInt64?
}

/// The confinement every helper enters before it reads anything a guest controls: the empty root, resource
/// limits, no privileges, then its seccomp policy (on every thread).
enum HelperSandbox {
    /// `processes` caps the processes (threads included) of the helper's uid; nil leaves it to the policy.
    static func enter(_ spec: SandboxSpec, role: Role, controlFD: Int32, processes: UInt64?) throws {
        if spec.crashOnSignal { _ = vmm_install_crash_handler(SIGUSR1) }
        try Jail.enterEmptyRoot(hostname: role.processName)
        Log.debug("jail: empty root entered")
        try Privileges.limit(openFiles: 64, processes: processes, addressSpace: spec.addressSpaceLimit)
        try Privileges.drop(uid: spec.uid, gid: spec.gid)
        try rearmParentDeathSignal(controlFD: controlFD)
        Log.debug("privileges dropped")
        let program: SeccompFilter.Program
        if let text = spec.policyText {
            program = try SeccompFilter.program(Policy.parse(text, file: spec.policyName, constants: PolicyConstants.table))
        } else {
            guard let builtin = BuiltinPolicies.program(file: role.policyFile) else {
                throw SeccompFilter.Error(description: "\(role.policyFile): no program built into vmm")
            }
            program = builtin
        }
        try SeccompFilter.load(program, mode: spec.mode, reportFD: controlFD)
        Log.debug("seccomp policy \(spec.policyName) \(spec.policyText == nil ? "loaded, compiled into vmm" : "compiled and loaded") "
                  + "(\(program.ruleCount) rules)")
        if let fault = spec.faultSyscall { provoke(fault) }
        // What the start allocated and freed (the spec's JSON, the policy's filter) goes back to the kernel: a
        // standby may wait the VM's whole life.
        _ = malloc_trim(0)
    }

    /// Changing credentials clears the parent-death signal set before exec: set it again, then make sure the
    /// supervisor did not die in between (its end of the control pipe would be gone).
    static func rearmParentDeathSignal(controlFD: Int32) throws {
        _ = try Signals.dieWithParent()
        var p = pollfd(fd: controlFD, events: Int16(POLLOUT), revents: 0)
        if poll(&p, 1, 0) == 1 && p.revents & Int16(POLLERR | POLLHUP) != 0 {
            Log.error("the supervisor is gone; stopping")
            exit(1)
        }
    }

    /// Makes a call the policy forbids, so tests can watch the sandbox react.
    static func provoke(_ name: String) {
        Log.info("fault hook: calling \(name)")
        switch name {
        case "openat": _ = vmm_open("/etc/hostname", O_RDONLY, 0)
        case "socket": _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        case "execve":
            var argv: [UnsafeMutablePointer<CChar>?] = [nil]
            _ = execve("/bin/true", &argv, &argv)
        case "ptrace": _ = vmm_fault_ptrace()
        default: Log.warning("fault hook: unknown call \(name)")
        }
    }
}
