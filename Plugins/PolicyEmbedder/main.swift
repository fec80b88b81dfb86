import Glibc

// The EmbedPolicies plugin's generator: `PolicyEmbedder OUTPUT FILE...` writes a Swift file that defines
// `BuiltinPolicies.texts`, the contents of each FILE keyed by its name, as plain string literals.

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
var source = "// Generated at build time from Policies/*.policy by the EmbedPolicies plugin. Do not edit; not checked in.\n\n"
source += "extension BuiltinPolicies {\n    static let texts: [String: String] = [\n"
for path in arguments.dropFirst(2) {
    guard let text = readFile(path) else { fail("cannot read \(path)") }
    let name = path.split(separator: "/").last.map(String.init) ?? path
    source += "        \(literal(name)): \(literal(text)),\n"
}
source += arguments.count == 2 ? "        :\n" : ""
source += "    ]\n}\n"
guard let out = fopen(arguments[1], "wb") else { fail("cannot write \(arguments[1])") }
guard fputs(source, out) >= 0, fclose(out) == 0 else { fail("cannot write \(arguments[1])") }
