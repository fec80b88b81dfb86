import SeccompPolicy

/// The role policies vmm enforces: the texts of `Policies/*.policy` and each role's compiled program, built into the
/// binary at build time by the EmbedPolicies plugin (`texts` and `serializedProgram(of:)` are generated), so that
/// neither a config, nor the environment, nor files beside the binary decide what a helper may call, and no helper
/// parses a policy or runs libseccomp on its way to serving (that was 0.3-0.8 ms of CPU per helper, on the same
/// two CPUs as the VM's start).
public enum BuiltinPolicies {
    /// The name `PolicySource` errors use for the built-in texts, in place of a directory.
    static let directoryName = "(built into vmm)"

    /// The names of the built-in policy files.
    public static var fileNames: [String] { texts.keys.sorted() }

    /// The built-in text of one policy file (e.g. `common.policy`), nil when there is none.
    public static func text(of file: String) -> String? { texts[file] }

    /// The compiled program of a role's policy file (e.g. `pio.policy`), includes expanded; nil for a file that is
    /// only included, or none.
    public static func program(file: String) -> SeccompFilter.Program? {
        serializedProgram(of: file).flatMap { SeccompFilter.Program(serialized: $0) }
    }

    /// A policy file (a role's, e.g. `pio.policy`) with its `@include`s expanded: the built-in one, or, when `directory` is given, the files
    /// there (`vmm run --unsafe-policy-dir`, `vmm policy-check --dir`: for writing and checking policies).
    public static func load(file: String, directory: String?, reader: (String) -> String?) throws(PolicySource.LoadError) -> String {
        if let directory { return try PolicySource.load(file, directory: directory, reader: reader) }
        let prefix = directoryName + "/"
        return try PolicySource.load(file, directory: directoryName) { path in
            path.hasPrefix(prefix) ? texts[String(path.dropFirst(prefix.count))] : nil
        }
    }
}
