import Glibc
import SeccompPolicy

// The EmbedPolicies plugin's generator: `PolicyEmbedder OUTPUT FILE...` writes a Swift file that defines, for
// `BuiltinPolicies`, `texts` (the contents of each FILE keyed by its name, as plain string literals) and
// `serializedProgram(of:)`: each policy that no other includes (a role's) compiled with its includes, by the parser
// and libseccomp calls a helper would make, as `SeccompFilter.Program.serialized` gives it. A policy that does not
// parse or compile fails the build, naming it.

/// A Swift string literal for `text`: printable ASCII as it is, everything else escaped, so that no policy text
/// can end the literal or inject code.
func literal(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        case " "..."~": out.unicodeScalars.append(scalar)
        default: out += "\\u{\(String(scalar.value, radix: 16))}"
        }
    }
    return out + "\""
}

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        bytes += buffer[0..<n]
        if n < buffer.count { return ferror(f) != 0 ? nil : String(decoding: bytes, as: UTF8.self) }
    }
}

func fail(_ message: String) -> Never {
    let line = Array("PolicyEmbedder: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else { fail("usage: PolicyEmbedder OUTPUT FILE...") }
var files: [(name: String, directory: String, text: String)] = []
for path in arguments.dropFirst(2) {
    guard let text = readFile(path) else { fail("cannot read \(path)") }
    let parts = path.split(separator: "/", omittingEmptySubsequences: false)
    files.append((String(parts.last ?? ""), parts.dropLast().joined(separator: "/"), text))
}
var source = "// Generated at build time from Policies/*.policy by the EmbedPolicies plugin. Do not edit; not checked in.\n\n"
source += "extension BuiltinPolicies {\n    static let texts: [String: String] = [\n"
for file in files { source += "        \(literal(file.name)): \(literal(file.text)),\n" }
source += files.isEmpty ? "        :\n" : ""
source += "    ]\n\n"
source += "    /// A role's policy (a file no other includes), compiled: its rule count and BPF program.\n"
source += "    static func serializedProgram(of file: String) -> [UInt8]? {\n        switch file {\n"
let included = Set(files.flatMap { PolicySource.includes(of: $0.text) })
// Includes are read from the texts above, so that each program is compiled from exactly the texts built in.
let textAt = Dictionary(files.map { ("\($0.directory)/\($0.name)", $0.text) }, uniquingKeysWith: { first, _ in first })
for file in files where !included.contains(file.name) {
    let bytes: [UInt8]
    do {
        let text = try PolicySource.load(file.name, directory: file.directory) { textAt[$0] }
        bytes = try SeccompFilter.program(Policy.parse(text, file: file.name, constants: PolicyConstants.table)).serialized
    } catch {
        fail("\(file.name): \(error)")
    }
    source += "        case \(literal(file.name)):\n            return ["
    for (i, byte) in bytes.enumerated() {
        source += (i % 16 == 0 ? "\n                " : " ") + "0x" + (byte < 16 ? "0" : "") + String(byte, radix: 16) + ","
    }
    source += "\n            ]\n"
}
source += "        default:\n            return nil\n        }\n    }\n}\n"
guard let out = fopen(arguments[1], "wb") else { fail("cannot write \(arguments[1])") }
guard fputs(source, out) >= 0, fclose(out) == 0 else { fail("cannot write \(arguments[1])") }
