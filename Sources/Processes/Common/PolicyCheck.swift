import Machine
import Sandbox
import SeccompPolicy

/// The policy checker behind `vmm policy-check`: every role's policy must parse (each rule with its comment)
/// and compile with libseccomp; prints each role's rules.
public enum PolicyCheck {
    /// Returns the report and whether every policy passed. `directory`: check the files there; nil: the policies
    /// built into vmm.
    public static func run(directory: String?, reader: (String) -> String?) -> (String, Bool) {
        var out: [String] = []
        var ok = true
        out.append(directory.map { "policies in \($0)" } ?? "the policies built into vmm")
        for role in Role.allCases {
            do {
                let text = try BuiltinPolicies.load(file: role.policyFile, directory: directory, reader: reader)
                let policy = try Policy.parse(text, file: role.policyFile, constants: PolicyConstants.table)
                let program = try SeccompFilter.program(policy)
                out.append("\n\(role.policyFile): \(policy.rules.count) rules, compiles (\(program.length) BPF instructions;"
                           + " the column before each rule: the instructions its first case runs through)")
                for r in policy.rules {
                    let condition: String
                    if let e = r.errno { condition = "fails with errno \(e)" } else if r.clauses.isEmpty { condition = "allowed" } else {
                        condition = r.clauses.map { c in c.map { "arg\($0.argument) \($0.op.rawValue) 0x\(String($0.value, radix: 16))" }
                            .joined(separator: " && ") }.joined(separator: " || ")
                    }
                    let cost = SeccompFilter.number(of: r.syscall).flatMap {
                        program.evaluate(syscall: $0, arguments: r.firstCaseArguments)
                    }.map { String($0.instructions) } ?? "?"
                    out.append("  \(cost.padding(5))\(r.syscall.padding(18)) \(condition)  # \(r.comment)")
                }
            } catch {
                ok = false
                out.append("\n\(role.policyFile): FAILED: \(error)")
            }
        }
        return (out.joined(separator: "\n"), ok)
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
