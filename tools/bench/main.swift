import Foundation
let path = CommandLine.arguments[1]
let kernel = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
let t0 = Date()
let r = try BareLoop.run(kernel: kernel, cmdline: CommandLine.arguments.count > 2 ? CommandLine.arguments[2] : "say=hi exit=3")
print(String(decoding: r.output, as: UTF8.self), "status", r.exitStatus, "exits", r.exits, Date().timeIntervalSince(t0))
