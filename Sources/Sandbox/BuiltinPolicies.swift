/// The role policies vmm enforces: the texts of `Policies/*.policy`, built into the binary at build time by the
/// EmbedPolicies plugin (`texts` is generated), so that neither a config, nor the environment, nor files beside the
/// binary decide what a helper may call.
public enum BuiltinPolicies {
    /// The name `PolicySource` errors use for the built-in texts, in place of a directory.
    static let directoryName = "(built into vmm)"

    /// The names of the built-in policy files.
    public static var fileNames: [String] { texts.keys.sorted() }

    /// The built-in text of one policy file (e.g. `common.policy`), nil when there is none.
    public static func text(of file: String) -> String? { texts[file] }

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
