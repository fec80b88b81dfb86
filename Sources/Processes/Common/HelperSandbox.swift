import CKVM
import CLinux
import Glibc
import Machine
import Sandbox
import System

/// How a helper is confined, as the supervisor decided it: its policy, the seccomp mode, the unprivileged ids, and
/// a test-only fault to provoke once confined.
struct SandboxSpec: Codable {
    var policyName: String
    /// The policy's text (includes expanded) when it is not the role's built-in one (`vmm run --unsafe-policy-dir`);
    /// nil for the built-in policy, which a forked helper gets compiled by the launcher and an exec'd one has in its
    /// binary. Not sent by default: each copy of the text in the spec stayed in the helper's heap for its life.
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
        let handedDown = HelperLauncher.filterHandedDown(builtinPolicy: spec.policyText == nil)
        let program = try handedDown ?? SeccompFilter.program(Policy.parse(
            spec.policyText ?? builtinPolicy(role),
            file: spec.policyName, constants: PolicyConstants.table))
        try SeccompFilter.load(program, mode: spec.mode, reportFD: controlFD)
        Log.debug("seccomp policy \(spec.policyName) \(handedDown != nil ? "loaded, compiled by the launcher" : "compiled and loaded") "
                  + "(\(program.ruleCount) rules)")
        if let fault = spec.faultSyscall { provoke(fault) }
        // What the start allocated and freed (the spec's JSON, the policy's filter) goes back to the kernel: a
        // standby may wait the VM's whole life.
        _ = malloc_trim(0)
    }

    /// The role's built-in policy, includes expanded: what a helper runs unless `--unsafe-policy-dir` names another.
    static func builtinPolicy(_ role: Role) throws -> String {
        try BuiltinPolicies.load(file: role.policyFile, directory: nil, reader: { _ in nil })
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

/// Names a policy may use for argument values.
enum PolicyConstants {
    static let table: [String: UInt64] = [
        "KVM_RUN": UInt64(VMM_KVM_RUN), "KVM_GET_REGS": UInt64(VMM_KVM_GET_REGS), "KVM_SET_REGS": UInt64(VMM_KVM_SET_REGS),
        "KVM_GET_SREGS": UInt64(VMM_KVM_GET_SREGS), "KVM_SET_SREGS": UInt64(VMM_KVM_SET_SREGS),
        "KVM_GET_VCPU_EVENTS": UInt64(VMM_KVM_GET_VCPU_EVENTS), "KVM_TRANSLATE": UInt64(VMM_KVM_TRANSLATE),
        "KVM_SET_VCPU_EVENTS": UInt64(VMM_KVM_SET_VCPU_EVENTS), "KVM_INTERRUPT": UInt64(VMM_KVM_INTERRUPT), "KVM_GET_FPU": UInt64(VMM_KVM_GET_FPU),
        "KVM_GET_MSRS": UInt64(VMM_KVM_GET_MSRS), "KVM_NMI": UInt64(VMM_KVM_NMI),
        "KVM_GET_MP_STATE": UInt64(VMM_KVM_GET_MP_STATE), "KVM_SET_MP_STATE": UInt64(VMM_KVM_SET_MP_STATE),
        "KVM_SET_GUEST_DEBUG": UInt64(VMM_KVM_SET_GUEST_DEBUG),
        "KVM_SET_CPUID2": UInt64(VMM_KVM_SET_CPUID2), "KVM_CREATE_VCPU": UInt64(VMM_KVM_CREATE_VCPU),
        "PROT_NONE": UInt64(PROT_NONE), "PROT_READ": UInt64(PROT_READ), "PROT_WRITE": UInt64(PROT_WRITE),
        "CLONE_VM": UInt64(CLONE_VM), "CLONE_THREAD": UInt64(CLONE_THREAD),
        "PR_SET_NAME": UInt64(VMM_PR_SET_NAME), "SIGSYS": UInt64(SIGSYS),
        "F_GETFL": UInt64(F_GETFL), "F_SETFL": UInt64(F_SETFL), "O_NONBLOCK": UInt64(O_NONBLOCK),
        "ENOSYS": UInt64(ENOSYS), "EPERM": UInt64(EPERM),
        "FALLOC_FL_KEEP_SIZE": 0x01, "FALLOC_FL_PUNCH_HOLE": 0x02, "FALLOC_FL_ZERO_RANGE": 0x10,  // linux/falloc.h
        "TUNSETOFFLOAD": UInt64(VMM_TUNSETOFFLOAD),
    ]
}
