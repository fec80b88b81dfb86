import API
import ArgumentParser
import Config
import Glibc
import Machine
import Processes
import System

@main
struct VMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmm",
        abstract: "A multi-process, sandboxed KVM microVMM.",
        subcommands: [Run.self, Validate.self, PolicyCheckCommand.self, RoleCommand.self])

    /// Helpers go straight to their role: the supervisor always passes exactly `_role ROLE JSON`, and the argument
    /// parser's set-up would add about 3 ms to every helper's start (on the way to the guest's first instruction).
    static func main() {
        let arguments = CommandLine.arguments
        if arguments.count == 4, arguments[1] == RoleCommand.configuration.commandName, let role = Role(rawValue: arguments[2]) {
            Glibc.exit(RoleCommand.run(role, spec: arguments[3]))
        }
        // Before the argument parser and any thread: the launcher forks the helpers (see HelperLauncher).
        if arguments.count > 1, arguments[1] == "run", !arguments.contains(where: { $0 == "-h" || $0 == "--help" }) {
            HelperLauncher.startEarly()
            // `run`'s usual command lines are read without the argument parser, whose set-up costs 1-2 ms on
            // the way to the guest's first instruction; anything else (help, a bad option) goes to the parser below.
            if let request = RunRequest(quick: arguments.dropFirst(2)) {
                // The VM's status comes back as an ExitCode: exit with it directly. The parser's exit(withError:)
                // builds its help text even for a bare exit code (reflection, about 1.5 ms at the end of every run).
                do { try request.run() } catch let code as ExitCode { Glibc.exit(code.rawValue) } catch { Run.exit(withError: error) }
                Run.exit()
            }
        }
        main(nil)
    }
}

/// Options shared by the commands that read a config file.
struct ConfigOptions: ParsableArguments {
    @Option(name: .customLong("config-file"), help: "Firecracker-format JSON config file.")
    var configFile: String

    func load() throws -> VMConfig { try Self.load(configFile) }

    static func load(_ configFile: String) throws -> VMConfig {
        do { return try ConfigParser.load(path: configFile) } catch {
            Log.report("config error: \(error)")
            throw ExitCode(ExitStatus.configError.code)
        }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Launch a microVM from a config file, or configured through Firecracker's API.")

    @Option(name: .customLong("config-file"), help: "Firecracker-format JSON config file.")
    var configFile: String?

    @Option(name: .customLong("api-sock"),
            help: "Serve Firecracker's REST API on this Unix socket (which must not exist). Without --config-file the VM starts on PUT /actions InstanceStart.")
    var apiSock: String?

    @Option(help: "Diagnostics level: error, warning, info, debug (overrides logger.level).")
    var logLevel: String?

    @Flag(help: "Seccomp log mode: a denied call is reported by name and fails with ENOSYS instead of killing the helper.")
    var seccompLog = false

    @Option(name: .customLong("unsafe-policy-dir"),
            help: "UNSAFE, for writing policies: give the helpers the policies in this directory instead of the ones built into vmm.")
    var unsafePolicyDir: String?

    @Option(name: .customLong("inject-fault"),
            help: ArgumentHelp("Inject faults into a device process (repeatable): DEVICE:ACTION[,KEY=N...], ACTION kill, stop or crash; keys after_ms, every_ms, after_requests, count. E.g. pio:kill,every_ms=50,count=100.", valueName: "spec"))
    var injectFault: [String] = []

    @Option(name: .customLong("fault-report"), help: "Write the fault-injection report here as JSON.")
    var faultReport: String?

    func validate() throws {
        if configFile == nil && apiSock == nil { throw ValidationError("give --config-file, --api-sock or both") }
    }

    func run() throws {
        try RunRequest(configFile: configFile, apiSock: apiSock, logLevel: logLevel, seccompLog: seccompLog,
                       unsafePolicyDir: unsafePolicyDir, injectFault: injectFault, faultReport: faultReport).run()
    }
}

/// What `vmm run` was asked to do, however its command line was read.
struct RunRequest {
    var configFile: String?
    var apiSock: String?
    var logLevel: String?
    var seccompLog = false
    var unsafePolicyDir: String?
    var injectFault: [String] = []
    var faultReport: String?

    func run() throws {
        // Before any thread exists, so that every thread inherits the mask and the signalfd sees them all.
        let signals: FileDescriptor
        do { signals = try Signals.blockAndOpenSignalFD([SIGINT, SIGTERM, SIGHUP]) } catch {
            Log.report("\(error)")
            throw ExitCode(ExitStatus.hostSetupFailed.code)
        }
        var loaded: VMConfig?
        var control: VMControl?
        var server: APIServer?
        defer { server?.stop() }
        if let configFile { loaded = try ConfigOptions.load(configFile) }
        if let apiSock {
            // With a config file the VM starts at once and the API controls it (as Firecracker does); without
            // one the API configures it and InstanceStart starts it.
            do {
                let c = try VMControl()
                server = try APIServer(socketPath: apiSock, controller: APIController(control: c, running: loaded))
                control = c
            } catch {
                Log.report("\(error)")
                throw ExitCode(ExitStatus.hostSetupFailed.code)
            }
            if configFile == nil {
                guard let started = control?.waitForStart(signals: signals.raw) else {
                    Log.report("signal received before InstanceStart; stopping")
                    throw ExitCode(ExitStatus.interrupted.code)
                }
                loaded = started
            }
        }
        guard var config = loaded else { throw ExitCode(ExitStatus.configError.code) }
        // Before InstanceStart the API's errors go back as 400s; from here on a failure fails the start request.
        func configError(_ message: String) -> ExitCode {
            Log.report(message)
            control?.startFinished(failure: message)
            return ExitCode(ExitStatus.configError.code)
        }
        if seccompLog { config.vmm.sandbox.seccompLogOnly = true }
        do {
            config.vmm.faults += try injectFault.map { (text) throws(ConfigError) in try ConfigParser.fault(commandLine: text) }
            try ConfigParser.checkDeviceNames(config)
        } catch {
            throw configError("config error: \(error)")
        }
        if let faultReport { config.vmm.faultReportPath = faultReport }
        Log.level = level(logLevel) ?? level(config.logger.level.rawValue) ?? .warning
        Log.showLevel = config.logger.showLevel
        Log.showOrigin = config.logger.showLogOrigin
        if let path = config.logger.logPath {
            do { Log.fd = try FileDescriptor.openOutput(path, .append).take() } catch {
                throw configError("config error: logger.log_path: cannot open \(error)")
            }
        }
        if let unsafePolicyDir {
            config.vmm.sandbox.unsafePolicyDirectory = unsafePolicyDir
            Log.report("warning: --unsafe-policy-dir: the helpers get the policies in \(unsafePolicyDir), not the ones built into vmm")
        }
        let status = Supervisor(config: config, signals: signals, control: control, launcher: HelperLauncher.takeEarly()).run()
        throw ExitCode(status.code)
    }

    private func level(_ name: String?) -> Log.Level? {
        switch name?.lowercased() {
        case "off": return .off
        case "error": return .error
        case "warning", "warn": return .warning
        case "info": return .info
        case "debug": return .debug
        case "trace": return .trace
        default: return nil
        }
    }
}

/// Kept out of the type so that it keeps its memberwise initializer (the argument parser's path uses it).
extension RunRequest {
    /// `run`'s options (after `run`) read without the argument parser: `--name value`, `--name=value` and the flag,
    /// each single-valued option at most once, with --config-file or --api-sock. nil for anything else (help, an
    /// unknown, repeated or incomplete option), which the parser then reports as usual.
    init?(quick arguments: ArraySlice<String>) {
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            guard argument.hasPrefix("--") else { return nil }
            if argument == "--seccomp-log" {
                guard !seccompLog else { return nil }
                seccompLog = true
                continue
            }
            let name: Substring, value: String
            if let equals = argument.firstIndex(of: "=") {
                name = argument[argument.index(argument.startIndex, offsetBy: 2)..<equals]
                value = String(argument[argument.index(after: equals)...])
            } else {
                guard let next = rest.popFirst(), !next.hasPrefix("-") else { return nil }
                name = argument.dropFirst(2)
                value = next
            }
            func once(_ slot: inout String?) -> Bool {
                guard slot == nil else { return false }
                slot = value
                return true
            }
            switch name {
            case "config-file": guard once(&configFile) else { return nil }
            case "api-sock": guard once(&apiSock) else { return nil }
            case "log-level": guard once(&logLevel) else { return nil }
            case "unsafe-policy-dir": guard once(&unsafePolicyDir) else { return nil }
            case "fault-report": guard once(&faultReport) else { return nil }
            case "inject-fault": injectFault.append(value)
            default: return nil
            }
        }
        guard configFile != nil || apiSock != nil else { return nil }
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check a config file and exit; starts nothing.")
    @OptionGroup var options: ConfigOptions

    func run() throws {
        _ = try options.load()
        print("\(options.configFile): OK")
    }
}

struct PolicyCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy-check", abstract: "Check that every role's seccomp policy parses and compiles; list the rules.")
    @Option(help: "Check the policy files in this directory (default: the policies built into vmm).") var dir: String?

    func run() throws {
        let (report, ok) = PolicyCheck.run(directory: dir, reader: FileDescriptor.readText)
        print(report)
        if !ok { throw ExitCode(1) }
    }
}

/// The helper processes: the same binary, started by the supervisor with a role and its arguments.
struct RoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_role", abstract: "Internal: run as a helper process.",
                                                    shouldDisplay: false)
    @Argument var role: Role
    @Argument var spec: String

    func run() throws { throw ExitCode(Self.run(role, spec: spec)) }

    static func run(_ role: Role, spec: String) -> Int32 { HelperStartup.run(role, spec: spec) }
}

extension Role: ExpressibleByArgument {}
