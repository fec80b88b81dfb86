import ArgumentParser
import BareLoop
import BenchKit
import Foundation
import Glibc
import struct System.CycleClock

/// One runner of an interleaved exit loop: a guest in a process tree of its own, which the benchmark pauses and
/// resumes as a whole (SIGSTOP, SIGCONT: vmm's supervisor and device processes with its vCPU, as a paused VM).
struct TurnRunner {
    let name: String
    /// The runner's process, its console on the pipe; not started yet.
    let process: () throws -> (Process, Pipe)
    /// The CPU vmm's vCPU thread is pinned to once it exists; nil where the process pins itself (the bare loop).
    var pinVCPU: Int?
}

/// A runner's console as it arrives: the host TSC at which its guest said its timed accesses begin, and all of it
/// once every process of the runner has closed it.
final class ConsoleCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var timingAt: UInt64?
    private var ended = false
    private static let timingLine = Data("portloop: timing\n".utf8)

    init(_ pipe: Pipe) {
        let fd = pipe.fileHandleForReading.fileDescriptor
        Thread.detachNewThread { [self] in
            // read(2) itself: this process gets a SIGCHLD whenever it pauses or resumes a child, and a read it
            // interrupts is retried here, where FileHandle's reading would end the console early.
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                let now = CycleClock.now()  // before anything else: the line's arrival, as near as this side sees it
                let done: Bool = lock.withLock {
                    if n <= 0 {
                        ended = true
                        return true
                    }
                    data.append(contentsOf: buffer[..<n])
                    if timingAt == nil, data.range(of: Self.timingLine) != nil { timingAt = now }
                    return false
                }
                if done { return }
            }
        }
    }

    var timingStamp: UInt64? { lock.withLock { timingAt } }
    var hasEnded: Bool { lock.withLock { ended } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

/// Runs an exit loop's runners in turns (see `Interleaving`): each starts alone and runs its guest's warm-up, is
/// paused as its timed accesses begin, and then every cycle each runner still running gets one turn of
/// `turnMilliseconds`, in a fresh random order, the others paused.
enum TurnTaking {
    struct Outcome {
        /// Per runner, its figure (TSC cycles per access) in each cycle it has one for.
        var figures: [String: [Int: Double]] = [:]
        var failures: [String: String] = [:]
    }

    static func run(_ runners: [TurnRunner], turnMilliseconds: Int, tscKHz: Int, timeout: Double) throws -> Outcome {
        struct Live {
            let runner: TurnRunner
            let process: Process
            let console: ConsoleCapture
            var turns: [Interleaving.Turn] = []
        }
        var outcome = Outcome()
        var live: [Live] = []
        defer {
            // Whatever is left (a runner that failed, an error): ended, not left paused.
            for l in live where l.process.isRunning {
                for pid in ProcessTree.all(l.process.processIdentifier) {
                    kill(pid, SIGKILL)
                    kill(pid, SIGCONT)
                }
            }
        }
        for runner in runners.shuffled() {
            let (p, pipe) = try runner.process()
            try p.run()
            let console = ConsoleCapture(pipe)
            live.append(Live(runner: runner, process: p, console: console))
            if let cpu = runner.pinVCPU, let why = Runner.pinVCPUThread(of: p.processIdentifier, to: cpu) {
                outcome.failures[runner.name] = "could not pin its vCPU thread (\(why))"
            }
            let deadline = Date().addingTimeInterval(30)
            while console.timingStamp == nil && !console.hasEnded && Date() < deadline { usleep(1000) }
            signal(p.processIdentifier, SIGSTOP)
            if console.timingStamp == nil {
                outcome.failures[runner.name] = "its guest never began its timed accesses (\(console.text.suffix(200)))"
            }
        }
        var active = live.indices.filter { outcome.failures[live[$0].runner.name] == nil }
        let deadline = Date().addingTimeInterval(timeout)
        var cycle = 0
        while !active.isEmpty && Date() < deadline {
            for i in active.shuffled() {
                let start = CycleClock.now()
                signal(live[i].process.processIdentifier, SIGCONT)
                usleep(UInt32(turnMilliseconds * 1000))
                signal(live[i].process.processIdentifier, SIGSTOP)
                live[i].turns.append(Interleaving.Turn(cycle: cycle, start: start, end: CycleClock.now()))
            }
            active.removeAll { live[$0].console.hasEnded }
            cycle += 1
        }
        for l in live where outcome.failures[l.runner.name] == nil {
            guard l.console.hasEnded else {
                outcome.failures[l.runner.name] = "did not finish within \(Int(timeout)) s of turns"
                continue
            }
            l.process.waitUntilExit()
            let output = l.console.text
            guard let timing = GuestTiming.parse(output), let guestStart = timing.start, let hostStart = l.console.timingStamp else {
                outcome.failures[l.runner.name] = "no windows and start from its guest (status \(l.process.terminationStatus): \(output.suffix(200)))"
                continue
            }
            // 2 ms: the way of the guest's line to this process (a few hundred microseconds through vmm's console),
            // well inside a window or a turn.
            outcome.figures[l.runner.name] = Interleaving.turnFigures(timing: timing, guestStart: guestStart, hostStart: hostStart,
                                                                     turns: l.turns, slack: UInt64(2 * tscKHz))
        }
        return outcome
    }

    /// Sends `sig` to `pid` and all its descendants (stopping: the parent first, so that it starts nothing more).
    private static func signal(_ pid: pid_t, _ sig: Int32) {
        for p in ProcessTree.all(pid) { kill(p, sig) }
    }
}

/// `vmm-bench bare-loop`: the bare KVM loop as a process of its own, for the interleaved group (which pauses and
/// resumes runners as processes); the guest's console lines on stdout as they complete, its debug-exit status as
/// this process's.
struct BareLoopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bare-loop", abstract: "Run a guest on the bare KVM loop (for the interleaved group).",
                                                    shouldDisplay: false)
    @Option(help: "The guest ELF.") var kernel: String
    @Option(help: "Its command line.") var cmdline = ""
    @Option(help: "The CPU to run the vCPU on; -1 for none.") var cpu = -1

    @Flag(help: "Post each port write to a device thread over vmm's channel (BareVM.runPosting).") var posting = false
    @Flag(help: "With --posting: and the spin census.") var census = false
    @Flag(help: "The interrupt baseline: the guest's local APIC timer on a timerfd the vCPU thread waits on (BareVM.runWithLocalTimer).")
    var localTimer = false
    func run() throws {
        let vm = try BareVM(kernel: Array(try Data(contentsOf: URL(fileURLWithPath: kernel))), cmdline: cmdline)
        vm.cpu = cpu >= 0 ? cpu : nil
        vm.streamOutput = STDOUT_FILENO
        let result = localTimer ? try vm.runWithLocalTimer() : posting ? try vm.runPosting(census: census) : try vm.run()
        throw ExitCode(result.exitStatus)
    }
}
