import CLinux
import CSeccomp
import Glibc

/// Compiles a `Policy` with libseccomp into a classic BPF program (Sandbox loads it: calls outside the policy trap,
/// and the SIGSYS handler reports them on the control pipe, then kills the process (kill mode) or fails the call
/// with ENOSYS (log mode)).
public enum SeccompFilter {
    public enum Mode: String, Sendable, Codable { case kill, log }

    public struct Error: Swift.Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// Checks every rule against libseccomp without loading anything (tools/policy-check uses it too).
    ///
    /// The filter tests the rules in the policy's order, and a first clause's leading `==` before the rule's other
    /// tests: every system call pays for the tests before its own, so a role's policy puts its hot call first (the
    /// vCPU's KVM_RUN: 10 BPF instructions instead of 56 in libseccomp's own order).
    public static func compile(_ policy: Policy) throws(Error) -> scmp_filter_ctx {
        guard let ctx = seccomp_init(UInt32(SCMP_ACT_TRAP)) else { throw Error(description: "seccomp_init failed") }
        for (index, rule) in policy.rules.enumerated() {
            guard let nr = number(of: rule.syscall) else {
                seccomp_release(ctx)
                throw Error(description: "line \(rule.line): unknown system call \(rule.syscall)")
            }
            // libseccomp tests calls of higher priority first (ties: the shorter rule first).
            var failed = seccomp_syscall_priority(ctx, nr, UInt8(max(0, 255 - index)))
            if failed == 0, let e = rule.errno {
                failed = seccomp_rule_add_array(ctx, 0x0005_0000 | UInt32(e & 0xffff), nr, 0, nil)  // SCMP_ACT_ERRNO(e)
            } else if failed == 0, rule.clauses.isEmpty {
                failed = seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ALLOW), nr, 0, nil)
            } else if failed == 0 {
                for (n, clause) in rule.clauses.enumerated() where failed == 0 {
                    var cmps = clause.map(argumentComparison)
                    // libseccomp tests a rule's plain `==` values under one shared node, largest first. The same
                    // test given as a masked one with every bit set (equal on all 64 bits) stays apart from that
                    // node and, added first, is tested first (libseccomp's internals: RolePolicyTests pins it).
                    if n == 0, cmps[0].op == SCMP_CMP_EQ {
                        cmps[0] = scmp_arg_cmp(arg: cmps[0].arg, op: SCMP_CMP_MASKED_EQ, datum_a: ~0, datum_b: cmps[0].datum_a)
                    }
                    failed = cmps.withUnsafeBufferPointer {
                        seccomp_rule_add_array(ctx, UInt32(SCMP_ACT_ALLOW), nr, UInt32(cmps.count), $0.baseAddress)
                    }
                }
            }
            if failed != 0 {
                seccomp_release(ctx)
                throw Error(description: "line \(rule.line): libseccomp refused the rule for \(rule.syscall): \(String(cString: strerror(-failed)))")
            }
        }
        return ctx
    }

    static func argumentComparison(_ c: Policy.Comparison) -> scmp_arg_cmp {
        let op: scmp_compare
        var a = c.value, b: UInt64 = 0
        switch c.op {
        case .eq: op = SCMP_CMP_EQ
        case .ne: op = SCMP_CMP_NE
        case .lt: op = SCMP_CMP_LT
        case .le: op = SCMP_CMP_LE
        case .gt: op = SCMP_CMP_GT
        case .ge: op = SCMP_CMP_GE
        case .allBits: op = SCMP_CMP_MASKED_EQ; a = c.value; b = c.value
        }
        return scmp_arg_cmp(arg: UInt32(c.argument), op: op, datum_a: a, datum_b: b)
    }

    /// Frees a filter from `compile` that was not loaded.
    public static func release(_ ctx: scmp_filter_ctx) { seccomp_release(ctx) }

    /// A compiled filter, ready to load: classic BPF, as libseccomp exports it. The mode (kill or log) is the SIGSYS
    /// handler's, not the filter's, so one program serves both.
    public struct Program: Sendable, Equatable {
        package let instructions: [UInt8]
        public let ruleCount: Int

        /// The program as bytes, for another process of this binary (`init(serialized:)`).
        public var serialized: [UInt8] {
            withUnsafeBytes(of: UInt64(ruleCount).littleEndian) { Array($0) } + instructions
        }

        /// nil unless `bytes` are a rule count and a whole number of BPF instructions. An array, not any collection:
        /// generic, this module's copy of it was unspecialised, and its first call in a helper scanned every
        /// protocol conformance of vmm (~0.2-0.3 ms on each helper's way to its filter).
        public init?(serialized bytes: [UInt8]) {
            guard bytes.count > 8, (bytes.count - 8) % 8 == 0 else { return nil }
            let count = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard count <= UInt64(Int.max) else { return nil }
            self.init(instructions: Array(bytes[8...]), ruleCount: Int(count))
        }

        init(instructions: [UInt8], ruleCount: Int) {
            self.instructions = instructions
            self.ruleCount = ruleCount
        }
    }

    /// Compiles `policy` into a program to load, here or in another process (the built-in policies are compiled
    /// when vmm is built: BuiltinPolicies).
    public static func program(_ policy: Policy) throws(Error) -> Program {
        let ctx = try compile(policy)
        defer { seccomp_release(ctx) }
        return try export(ctx, ruleCount: policy.rules.count)
    }

    static func export(_ ctx: scmp_filter_ctx, ruleCount: Int) throws(Error) -> Program {
        let fd = vmm_memfd_create("seccomp-bpf", 1)  // MFD_CLOEXEC
        guard fd >= 0 else { throw Error(description: "memfd_create: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let r = seccomp_export_bpf(ctx, fd)
        guard r == 0 else { throw Error(description: "seccomp_export_bpf failed: \(String(cString: strerror(-r)))") }
        let size = Int(lseek(fd, 0, SEEK_CUR))
        var bytes = [UInt8](repeating: 0, count: size)
        guard size > 0, size % 8 == 0, bytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, size, 0) }) == size else {
            throw Error(description: "reading the exported filter back failed")
        }
        return Program(instructions: bytes, ruleCount: ruleCount)
    }

    /// A system call's number on this architecture, nil for a name libseccomp does not know.
    public static func number(of name: String) -> Int32? {
        let nr = seccomp_syscall_resolve_name(name)
        return nr == __NR_SCMP_ERROR ? nil : nr
    }

    /// The name of a system call number on this architecture.
    public static func name(of number: Int32) -> String {
        guard let p = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), number) else { return "syscall \(number)" }
        defer { free(p) }
        return String(cString: p)
    }
}
