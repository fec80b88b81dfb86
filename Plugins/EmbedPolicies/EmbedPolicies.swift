import Foundation
import PackagePlugin

/// Builds the texts of `Policies/*.policy` into the target that uses this plugin (Sandbox), so the seccomp policies
/// come with the binary: the generated file is rebuilt from the policy files on every build that changes them and
/// is never checked in, so it cannot drift from them.
@main
struct EmbedPolicies: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let directory = context.package.directoryURL.appending(path: "Policies")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".policy") }.sorted()
        let files = names.map { directory.appending(path: $0) }
        let output = context.pluginWorkDirectoryURL.appending(path: "BuiltinPolicyTexts.swift")
        return [.buildCommand(displayName: "Embedding \(names.count) seccomp policies from Policies/",
                              executable: try context.tool(named: "PolicyEmbedder").url,
                              arguments: [output.path] + files.map(\.path),
                              inputFiles: files, outputFiles: [output])]
    }
}
