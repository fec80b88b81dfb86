import ArgumentParser
import BareLoop
import BenchKit
import Foundation
import Glibc
import struct System.FileDescriptor
import func System.cpuAffinity

/// Measures the VMM's hot paths side by side with a bare in-process KVM loop and QEMU, in one run, and prints
/// ratios computed within that run (these machines are noisy; only same-run ratios mean anything).
@main
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "vmm-bench",
                                                    abstract: "Exit cost, start-up and memory, against a bare KVM loop and QEMU.",
                                                    subcommands: [BareLoopCommand.self])
    /// The timer-latency guest's measured samples a run, and as many warm-up samples before them.
    static let interruptSamples = 1000
    /// The timer-latency rows: the measured samples' mean and best, the warm-up samples' mean.
    static let interruptKinds = ["mean", "best", "warm-up mean"]

    @Option(help: "Guest port accesses per exit-cost sample.") var iterations = 1_000_000
    @Option(help: "Samples of each figure.") var repetitions = 5
    @Option(help: "Interleaved rounds per repetition of each exit loop: every runner runs iterations/rounds accesses a round, in a fresh random order each round; a repetition's figure is the mean of its rounds, and an exit row's ratio the median of its per-round ratios.") var rounds = 4
    @Option(help: "Where to write the JSON report.") var json = "out/bench.json"
    @Option(help: "The vmm binary (default: next to this one).") var vmm: String?
    @Option(help: "A second vmm binary (e.g. an older build) measured side by side in the exits, irq and startup groups.") var baselineVmm: String?
    @Option(help: "Directory with the test guests (built there if missing or older than Tests/Guests).") var guests = "out/guests"
    @Option(help: "QEMU comparison: install (apt-get it if missing; the default), auto (only if installed), skip.") var qemu = "install"
    @Flag(help: "Tiny counts, to check the benchmark itself works.") var smoke = false
    @Option(help: "Measure only these groups (comma-separated: exits, interleaved, phases, irq, blk, restart, startup, memory, mmu; linux only when named).") var only: String?
    @Option(help: "Only the exit loops whose name contains one of these (semicolon-separated, as loop names hold commas: \"port out, 64;LAPIC\").") var loops: String?
    @Option(help: "tools/linux-image's output directory, for the linux group.") var linuxImage = "out/linux"
    @Option(help: "The CPU the exit loops run every runner's vCPU on (the bare loops' thread, vmm's vCPU thread; not QEMU's), -1 for none: this host's CPUs differ in speed from one moment to the next.") var pinCpu = 0
    @Option(help: "virtio-blk reads per sample (4 KiB random, 128 KiB sequential).") var blkCount = 10_000
    @Option(help: "Size of the virtio-blk test image in MiB.") var blkImageMib = 64

    func wants(_ group: String) -> Bool { only.map { $0.split(separator: ",").contains(Substring(group)) } ?? (group != "linux") }

    func wantsLoop(_ loop: ExitLoop) -> Bool {
        loops.map { $0.split(separator: ";").contains { loop.what.contains($0.trimmingCharacters(in: .whitespaces)) } } ?? true
    }

    func run() throws {
        let iterations = smoke ? 1000 : self.iterations
        let repetitions = smoke ? 1 : self.repetitions
        let guestDir = try ensureGuests()
        let portloop = guestDir + "/portloop.elf", hello = guestDir + "/hello.elf"
        let ours = OurVMM(binary: vmm ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/vmm"))
        var qemus: [QEMU] = []
        if qemu != "skip", let q = QEMU.locate(install: qemu == "install") {
            qemus = [QEMU(binary: q, irqchip: true), QEMU(binary: q, irqchip: false)]
        }

        var rows: [String: Samples] = [:]
        var unavailable: Set<String> = []
        func add(_ name: String, _ v: Double?) { if let v { rows[name, default: Samples()].values.append(v) } }
        /// The phases group's traced runs by loop and runner, for the fast-state rows (ExitPhases.fastState).
        var tracedRuns: [String: [String: [ExitPhases.Run]]] = [:]
        // The guest TSC rate, for turning guest-measured cycles into time (a vCPU that never runs is enough).
        var tscKHz = (try? BareVM(kernel: Array(try Data(contentsOf: URL(fileURLWithPath: portloop))), cmdline: "").vcpu.tscKHz()) ?? 0
        // The virtio-blk rows' image, in a directory of its own removed at the end.
        let blkCount = smoke ? 64 : self.blkCount, blkImageMiB = smoke ? 4 : blkImageMib
        var blkImage: String?
        let blkDirectory = NSTemporaryDirectory() + "vmm-bench-blk-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: blkDirectory) }
        if wants("blk") {
            try FileManager.default.createDirectory(atPath: blkDirectory, withIntermediateDirectories: true)
            blkImage = blkDirectory + "/disk.img"
            try BlockBench.makeImage(at: blkDirectory + "/disk.img", mib: blkImageMiB)
        }
        var failures: [String: String] = [:]
        let baseline = baselineVmm.map { OurVMM(binary: $0, name: "baseline vmm") }
        var phasesUnavailable: String?
        let pin = pinCpu >= 0 ? pinCpu : nil
        if let pin, !(try cpuAffinity(pid: 0)).contains(pin) {
            throw ValidationError("--pin-cpu \(pin): not a CPU this process may run on (-1 runs unpinned)")
        }

        for rep in 0..<repetitions {
            log("repetition \(rep + 1)/\(repetitions)")
            // The exit-cost loops; within each, the runners in a fresh random order, so that no runner always
            // follows the same one (a slow neighbour or a warm cache would otherwise favour one side every time),
            // and in rounds: this host's speed drifts by several percent over tens of seconds, and short runs taken
            // in turn meet the same drift, where one long run each would each meet their own.
            let rounds = smoke ? 1 : max(1, self.rounds)
            for loop in ExitLoop.all(iterations: max(1, iterations / rounds)) where wants("exits") && wantsLoop(loop) {
                // Each round's figures, averaged into the repetition's sample below.
                var thisRepetition: [String: [Double]] = [:]
                func addRound(_ name: String, _ v: Double?) { if let v { thisRepetition[name, default: []].append(v) } }
                let kernel = guestDir + "/" + loop.guest
                let image = { Array(try Data(contentsOf: URL(fileURLWithPath: kernel))) }
                var runners: [(String, () throws -> (GuestTiming?, String))] = [
                    (loop.row("bare KVM loop"), {
                        let bare = try BareVM.run(kernel: try image(), cmdline: loop.args, cpu: pin)
                        tscKHz = bare.tscKHz
                        return (GuestTiming.parse(String(decoding: bare.output, as: UTF8.self)), "status \(bare.exitStatus)")
                    }),
                ]
                // The floors of a posted write handed to another CPU (see BareVM.runPosting): vmm's channel alone,
                // then with the spin census's seats held and released as vmm's vCPU and devices do.
                for census in loop.floors {
                    runners.append((loop.postingBare(census: census), {
                        let vm = try BareVM(kernel: try image(), cmdline: loop.args)
                        vm.cpu = pin
                        let bare = try vm.runPosting(census: census)
                        return (GuestTiming.parse(String(decoding: bare.output, as: UTF8.self)), "status \(bare.exitStatus)")
                    }))
                }
                // vmm, the baseline build and (32-bit guests) QEMU: the same run and the same reading of its timing.
                let vmms: [(String, VMMUnderTest)] = [(loop.ours, ours)]
                    + (baseline.map { [(loop.baseline, $0)] } ?? [])
                    + (loop.qemu ? qemus.map { (loop.row($0.name), $0) } : [])
                for (name, m) in vmms {
                    runners.append((name, {
                        // Ours at info level: its statistics line splits each exit into time in KVM_RUN and the
                        // VMM's own time, so the row's ratio shows which side of the exit the cost is on.
                        let atInfo = (loop.configured(m) as? OurVMM).map { o -> VMMUnderTest in var o = o; o.options += ["--log-level", "info"]; return o }
                        let r = try Runner.run(atInfo ?? m, kernel: kernel, args: loop.args, captureLog: atInfo != nil,
                                               pinVCPU: m is OurVMM ? pin : nil)
                        if let why = r.pinFailure { failures[name] = "could not pin its vCPU thread (\(why))" }
                        let split = ExitLoop.split(name)
                        if atInfo != nil, let stats = RunStatistics.parse(r.log), stats.entries > 0 {
                            addRound(split.inRun, stats.runMilliseconds * 1e6 / Double(stats.entries))
                            addRound(split.vmmTime, stats.byReason.reduce(0) { $0 + $1.milliseconds } * 1e6 / Double(stats.entries))
                        } else if name == loop.ours {
                            // Ours must say; an older baseline build may not have the line, and then has no split.
                            failures[split.inRun] = "no statistics line (\(Self.why(r)))"
                            failures[split.vmmTime] = "no statistics line (\(Self.why(r)))"
                        }
                        return (GuestTiming.parse(r.output), Self.why(r))
                    }))
                }
                for _ in 0..<rounds {
                    for (name, measure) in runners.shuffled() {
                        let (timing, why) = try measure()
                        guard let timing, tscKHz > 0 else {
                            failures[name] = "no timing from the guest (\(why))"
                            failures[ExitLoop.steady(name)] = failures[name]
                            continue
                        }
                        addRound(name, timing.nanosecondsPerIteration(tscKHz: tscKHz))
                        // An older guest (a baseline build's own) may print no windows: that row has no steady figure.
                        addRound(ExitLoop.steady(name), timing.steadyNanosecondsPerIteration(tscKHz: tscKHz))
                    }
                }
                // A runner that failed in any round has no figure for this repetition. Every round's figure is
                // kept too: the rows of one loop ran their rounds side by side, and pair up by round.
                for (name, values) in thisRepetition where values.count == rounds && failures[name] == nil {
                    rows[name, default: Samples()].values.append(values.reduce(0, +) / Double(rounds))
                    rows[name]!.rounds += values
                    rows[name]!.roundGroup = loop.what
                }
            }
            // Where an exit's time goes, by the kernel's tracepoints (see ExitPhases): each runner's guest runs a
            // couple of seconds and is traced for a fraction of one, past vmm's start-up. For a read, the time between
            // KVM_RUNs holds the round trip to the device process.
            if wants("phases") && tscKHz > 0 && phasesUnavailable == nil {
                let (delay, duration) = smoke ? (0.3, 0.1) : (1.0, 0.3)
                // A tracer that could not start says why once, in the rows: no other loop tries again.
                for loop in ExitLoop.all(iterations: smoke ? 32_000 : 200_000) where wantsLoop(loop) && !loop.coalesced && phasesUnavailable == nil {
                    let kernel = guestDir + "/" + loop.guest
                    var runners: [(String, () throws -> String?)] = [("bare KVM loop", {
                        let bare = try BareVM.run(kernel: Array(try Data(contentsOf: URL(fileURLWithPath: kernel))), cmdline: loop.args, cpu: pin)
                        return GuestTiming.parse(String(decoding: bare.output, as: UTF8.self)) == nil ? "status \(bare.exitStatus)" : nil
                    })]
                    for m in [ours as VMMUnderTest] + (baseline.map { [$0] } ?? []) {
                        runners.append((m.name, {
                            let r = try Runner.run(loop.configured(m), kernel: kernel, args: loop.args, pinVCPU: pin)
                            if let why = r.pinFailure { return "could not pin its vCPU thread (\(why))" }
                            return GuestTiming.parse(r.output) == nil ? Self.why(r) : nil
                        }))
                    }
                    for (who, run) in runners.shuffled() {
                        let name = ExitLoop.phaseRow(loop, who, .whole)
                        let tracer: PhaseTracer
                        do { tracer = try PhaseTracer(delay: delay, duration: duration) } catch {
                            phasesUnavailable = "\(error)"
                            break
                        }
                        let failed = try run()
                        let trace = try tracer.finish()
                        if let failed {
                            failures[name] = "the guest did not finish its loop (\(failed))"
                        } else if let phases = ExitPhases.parse(trace) {
                            let cpus = phases.cpus.sorted { $0.key < $1.key }.map { "CPU \($0.key): \($0.value)" }.joined(separator: ", ")
                            log("\(loop.what), \(who): \(phases.exits) exits traced, whole exit \(Int(phases.medianCycles[.whole] ?? 0)) cycles (events by CPU: \(cpus))")
                            for (phase, cycles) in phases.medianCycles {
                                add(ExitLoop.phaseRow(loop, who, phase), cycles * 1e6 / Double(tscKHz))
                            }
                            add(ExitLoop.phaseMeanRow(loop, who), phases.meanCycles * 1e6 / Double(tscKHz))
                            if let entering = phases.medianCycles[.entering], let whole = phases.medianCycles[.whole] {
                                tracedRuns[loop.what, default: [:]][who, default: []]
                                    .append(ExitPhases.Run(entering: entering * 1e6 / Double(tscKHz), whole: whole * 1e6 / Double(tscKHz)))
                            }
                        } else {
                            failures[name] = "no complete KVM_RUN round trip traced"
                        }
                    }
                }
            }
            // The same loops in turns (see Interleaving): every runner's guest alive at once, each running only in
            // its turns of 50 ms, in a fresh order every cycle. Their per-cycle ratios are what the exit goals are
            // checked on: turns 50 ms apart meet the same host speed, rounds seconds long do not.
            if wants("interleaved") && tscKHz > 0 {
                let (perLoop, turn) = smoke ? (20_000, 20) : (max(1, iterations / 2), 50)
                let all = ExitLoop.all(iterations: perLoop, windows: smoke ? 100 : 2000)
                for loop in all where wantsLoop(loop) {
                    let kernel = guestDir + "/" + loop.guest
                    var runners = [bareTurnRunner(loop, name: loop.interleaved("bare KVM loop"), kernel: kernel, pin: pin)]
                    for census in loop.floors {
                        runners.append(bareTurnRunner(loop, name: loop.interleaved(ExitLoop.postingWho(census: census)), kernel: kernel, pin: pin,
                                                      options: ["--posting"] + (census ? ["--census"] : [])))
                    }
                    if let other = loop.goalLoop(among: all) {
                        runners.append(bareTurnRunner(other, name: loop.interleaved("bare KVM loop, \(other.what)"), kernel: guestDir + "/" + other.guest, pin: pin))
                    }
                    for (who, m) in [(loop.oursWho, ours)] + (baseline.map { [("baseline vmm", $0)] } ?? []) {
                        // Paused for up to three turns of others: more than a hung device's default 300 ms would allow.
                        var paused = m
                        paused.vmmSettings += loop.vmmSettings + #", "device_restart": {"hang_timeout_ms": 10000}"#
                        runners.append(TurnRunner(name: loop.interleaved(who), process: {
                            try Runner.process(paused, kernel: kernel, args: loop.args, memMiB: 64)
                        }, pinVCPU: pin))
                    }
                    let outcome = try TurnTaking.run(runners, turnMilliseconds: turn, tscKHz: tscKHz, timeout: 600)
                    failures.merge(outcome.failures) { first, _ in first }
                    let paired = Interleaving.commonCycles(outcome.figures)
                    for runner in runners where outcome.failures[runner.name] == nil {
                        guard let values = paired[runner.name], !values.isEmpty else {
                            failures[runner.name] = "no cycle in which every runner's turn held enough whole windows"
                            continue
                        }
                        let ns = values.map { $0 * 1e6 / Double(tscKHz) }
                        rows[runner.name, default: Samples()].values.append(ns.reduce(0, +) / Double(ns.count))
                        rows[runner.name]!.rounds += ns
                        rows[runner.name]!.roundGroup = loop.interleaved("")
                    }
                }
            }
            // Timer interrupt latency, by the guest's TSC: the bare in-process baseline (the vCPU thread waits on a
            // timerfd itself and injects), vmm, and QEMU where this host lets it; in a random order. A thousand
            // samples a run (0.3 s): with 200, one host hiccup of a millisecond moved a run's mean by 5 us. They
            // come after a thousand warm-up samples, reported in rows of their own: in a VM's first 150-200 ms a
            // tenth of vmm's samples took 0.3-4 ms (the bare loop's: a fortieth), and after that vmm's latency
            // was the bare loop's (the 200-sample means 29-42 us against 28-43 us).
            if wants("irq") && tscKHz > 0 {
                let kernel = guestDir + "/irqlatency.elf", samples = smoke ? 5 : Self.interruptSamples
                let args = "samples=\(samples) delay=200000 warmup=\(samples)"
                /// A run's measured samples, its warm-up samples, and why there are none.
                typealias Latencies = (measured: InterruptLatency?, warmup: InterruptLatency?, why: String)
                func latencies(_ output: String, _ why: String) -> Latencies {
                    (InterruptLatency.parse(output), InterruptLatency.parse(output, warmup: true), why)
                }
                var runners: [(String, () throws -> Latencies)] = [("bare KVM loop", {
                    let bare = try BareVM(kernel: Array(try Data(contentsOf: URL(fileURLWithPath: kernel))), cmdline: args).runWithLocalTimer()
                    return latencies(String(decoding: bare.output, as: UTF8.self), "status \(bare.exitStatus)")
                })]
                for m in [ours as VMMUnderTest] + (baseline.map { [$0] } ?? []) + qemus {
                    runners.append((m.name, {
                        let r = try Runner.run(m, kernel: kernel, args: args, timeout: 60)
                        return latencies(r.output, Self.why(r))
                    }))
                }
                for (name, measure) in runners.shuffled() {
                    let (latency, warmup, why) = try measure()
                    if let l = latency {
                        let us = l.latencyMicroseconds(tscKHz: tscKHz)
                        add("timer interrupt latency (mean): \(name)", us.mean)
                        add("timer interrupt latency (best): \(name)", us.min)
                        if let w = warmup {
                            add("timer interrupt latency (warm-up mean): \(name)", w.latencyMicroseconds(tscKHz: tscKHz).mean)
                        } else {
                            failures["timer interrupt latency (warm-up mean): \(name)"] = "no warm-up line (\(why))"
                        }
                    } else if name.hasPrefix("qemu") {
                        unavailable.insert("timer interrupt latency (mean): \(name)")
                    } else {
                        for kind in Self.interruptKinds { failures["timer interrupt latency (\(kind)): \(name)"] = "no latency line (\(why))" }
                    }
                }
            }
            // Start-up before the block and restart groups: the restart group's thousand process kills leave the host
            // tearing down their cgroups for a while after (kworkers), and a start measured then took twice as long
            // as one on a quiet host (31-43 ms against 18 ms here).
            var starters = [ours as VMMUnderTest] + (baseline.map { [$0] } ?? []) + qemus.filter(\.irqchip)
            starters.shuffle()
            for m in starters where wants("startup") {
                // firstbyte.elf writes to COM1 as its first instruction: spawn to that exit, as the supervisor's
                // CLOCK_MONOTONIC stamp of the guest's first exit says (vmm at --log-level info; a vmm too old to
                // say, and QEMU, have no such row), and spawn to the byte at this end of the console pipe.
                var probe = m
                if var ours = m as? OurVMM {
                    ours.options += ["--log-level", "info"]
                    probe = ours
                }
                let f = try Runner.run(probe, kernel: guestDir + "/firstbyte.elf", args: "", captureLog: true)
                if f.status == 1, f.output.hasPrefix("!"), let first = f.firstByte {
                    add("start-up to the guest's first UART byte: \(m.name)", first * 1000)
                    if let exit = FirstExit.monotonicNanoseconds(in: f.log), exit > f.spawnedAt {
                        add("start-up to the guest's first instruction: \(m.name)", Double(exit - f.spawnedAt) / 1e6)
                    } else if m.name == "vmm" {
                        failures["start-up to the guest's first instruction: vmm"] = "no first-exit stamp in its log"
                    }
                } else {
                    failures["start-up to the guest's first instruction: \(m.name)"] = "the guest did not write its byte and exit (\(Self.why(f)))"
                }
                let r = try Runner.run(m, kernel: hello, args: "say=bench exit=0")
                // Only a run that did its work counts: one that died at once would post a fast start-up.
                guard r.status == 1, r.output.contains("Hello from the guest: bench"), let first = r.firstByte else {
                    for what in ["first UART byte", "exit"] {
                        failures["start-up to \(what): \(m.name)"] = "the guest did not run to its exit (status \(r.status))"
                    }
                    continue
                }
                add("start-up to first UART byte: \(m.name)", first * 1000)
                add("start-up to exit: \(m.name)", r.total * 1000)
            }
            // virtio-blk reads from the guest's CPL3 loop (ioeventfd notifications, polled used ring) and the same
            // offsets read with pread on the host, in this order for each mode.
            if let image = blkImage, tscKHz > 0 {
                var machines: [VMMUnderTest] = [OurVMM(binary: ours.binary, drive: image)]
                if let q = qemus.first { machines.append(QEMUMicroVM(binary: q.binary, image: image)) }
                for mode in BlockPattern.Mode.allCases {
                    let pattern = BlockPattern(mode: mode, capacitySectors: UInt64(blkImageMiB) << 11)
                    let rate = { (requestsPerSecond: Double) in mode == .randread ? requestsPerSecond : requestsPerSecond * Double(pattern.requestBytes) / 1e6 }
                    add(Self.blkRow(mode, nil, "host pread"), rate(try BlockBench.hostPread(path: image, pattern: pattern, count: blkCount)))
                    for depth in [1, 32] {
                        for m in machines {
                            let name = Self.blkRow(mode, depth, m.name)
                            let r = try Runner.run(m, kernel: guestDir + "/virtio.elf", args: "test=bench mode=\(mode.rawValue) depth=\(depth) count=\(blkCount)", timeout: 300)
                            if let b = BlockBenchResult.parse(r.output), b.errors == 0 {
                                add(name, rate(b.requestsPerSecond(tscKHz: tscKHz)))
                            } else {
                                let last = r.output.split(whereSeparator: \.isNewline).last.map(String.init) ?? "no output"
                                failures[name] = "\(m is QEMUMicroVM ? "QEMU could not run this guest here" : "no result"): status \(r.status), \(last)"
                                log("\(name): \(failures[name]!)")
                            }
                        }
                    }
                }
            }
            // Crash isolation: a device process killed every 50 ms under a guest that keeps it busy; recovery is from
            // the kill to the device's next handled request (vmm's fault report), with and without the standby process.
            let kills = smoke ? 5 : 100
            // Each guest runs long enough for every kill to land while it runs (a kill waits for the last recovery):
            // the timer guest by its ticks; the UART guest by its lines, with room for a faster console (here ~2,300
            // lines a second: 100 lines a kill ended before the 100th kill).
            let restartCases: [(device: String, guest: String, args: String, ok: String)] = [
                ("pio", "uartstress.elf", "lines=\(kills * 400)", " 0 scratch mismatches"),
                ("irqchip", "timerstress.elf", "period=2000000 ticks=\(kills * 40)", "isr_missing=0 isr_stuck=0 ldr_mismatch=0"),
            ]
            for c in restartCases where wants("restart") {
                for standby in [true, false] {
                    let reportPath = NSTemporaryDirectory() + "vmm-bench-faults-\(getpid()).json"
                    defer { try? FileManager.default.removeItem(atPath: reportPath) }
                    let m = OurVMM(binary: ours.binary, name: standby ? "vmm" : "vmm without a standby process",
                                   vmmSettings: #", "device_restart": {"max_restarts": 1000000, "backoff_ms": 0, "max_backoff_ms": 0, "standby": \#(standby)}"#,
                                   options: ["--inject-fault", "\(c.device):kill,every_ms=50,count=\(kills)", "--fault-report", reportPath])
                    let r = try Runner.run(m, kernel: guestDir + "/" + c.guest, args: c.args, timeout: 300)
                    let report = FaultReport.read(reportPath)
                    if let report, report.faults == kills, r.output.contains(c.ok) {
                        add("\(c.device) restart, recovery median: \(m.name)", report.recoveryMedianMs)
                        add("\(c.device) restart, recovery p99: \(m.name)", report.recoveryP99Ms)
                        add("\(c.device) restart, detection median: \(m.name)", report.detectionMedianMs)
                    } else {
                        let why = report.map { $0.faults == kills ? "the guest did not end well" : "\($0.faults) of \(kills) kills landed before the guest ended" }
                            ?? "no fault report"
                        failures["\(c.device) restart, recovery median: \(m.name)"] = "\(why) (status \(r.status))"
                    }
                }
            }
            // The same for the virtio-blk process, 1,000 kills 50 ms apart under the virtio guest's stress mode
            // (numbered, checksummed sectors written and read back, 8 in flight): recovery is from the kill to the
            // device's next completed request; the run counts only if the guest saw no error, loss or duplicate.
            if wants("restart") {
                let kills = smoke ? 5 : 1000
                let directory = NSTemporaryDirectory() + "vmm-bench-blk-restart-\(getpid())"
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(atPath: directory) }
                _ = FileManager.default.createFile(atPath: directory + "/disk.img", contents: Data(count: 1 << 20))
                let m = OurVMM(binary: ours.binary, drive: directory + "/disk.img", driveWritable: true,
                               vmmSettings: #", "device_restart": {"max_restarts": 1000000, "backoff_ms": 0, "max_backoff_ms": 0}"#,
                               options: ["--inject-fault", "virtio-blk0:kill,every_ms=50,count=\(kills)", "--fault-report", directory + "/faults.json"])
                // About 128 requests of 1.6 ms per pass here (the guest's own checking dominates): long enough for
                // every kill to land while it runs.
                let r = try Runner.run(m, kernel: guestDir + "/virtio.elf", args: "test=stress passes=\(kills / 2 + 10) blocks=64 depth=8", timeout: 600)
                if let report = FaultReport.read(directory + "/faults.json"), report.faults == kills,
                   r.output.contains(" ioerrors=0 lost=0 corrupt=0 duplicates=0") {
                    add("virtio-blk restart, recovery median: vmm", report.recoveryMedianMs)
                    add("virtio-blk restart, recovery p99: vmm", report.recoveryP99Ms)
                    add("virtio-blk restart, detection median: vmm", report.detectionMedianMs)
                } else {
                    failures["virtio-blk restart, recovery median: vmm"] = "no complete fault report or the guest saw errors (status \(r.status))"
                }
            }
        }
        // A Linux boot (minutes here, so only when `--only` names it): tools/linux-image's kernel and initramfs with the
        // default config's command line and "-- true" (the init runs it, then powers off); its wall time from spawn
        // to exit, and the vCPU's time split into time in KVM_RUN and the VMM's time per exit reason, from the
        // supervisor's statistics line.
        var linuxReasons: [String] = []
        for _ in 0..<repetitions where wants("linux") {
            let args = try Self.defaultBootArgs() + " -- true"
            let m = OurVMM(binary: ours.binary, initrd: linuxImage + "/initramfs.cpio", options: ["--log-level", "info"])
            let r = try Runner.run(m, kernel: linuxImage + "/vmlinux", args: args, memMiB: 128, timeout: 3600, captureLog: true)
            guard r.status == 0, let stats = RunStatistics.parse(r.log) else {
                failures["Linux boot to power-off: wall"] = "no power-off or no statistics line (\(Self.why(r)))"
                continue
            }
            add("Linux boot to power-off: wall", r.total)
            add("Linux boot: in KVM_RUN", stats.runMilliseconds / 1000)
            for reason in stats.byReason {
                add("Linux boot: VMM time, \(reason.name)", reason.milliseconds / 1000)
                add("Linux boot: exits, \(reason.name)", Double(reason.exits))
                if !linuxReasons.contains(reason.name) { linuxReasons.append(reason.name) }
            }
        }
        for _ in 0..<repetitions where wants("mmu") {
            let (with, without) = try MMUBench.measure(translations: smoke ? 10_000 : 2_000_000)
            add("MMU translations, software TLB", with / 1e6)
            add("MMU translations, page walk every time", without / 1e6)
        }
        let memMiB = 64
        // Every device process the VMM can have (with its standby): a drive, a network interface (on a tap the
        // benchmark makes, as root), vsock and entropy.
        let everyDevice = wants("memory") ? try EveryDevice(ours) : nil
        defer { everyDevice?.remove() }
        for m in [ours as VMMUnderTest] + (everyDevice.map { [$0.vmm] } ?? []) + qemus.filter(\.irqchip) where wants("memory") {
            let p = try Runner.startResident(m, kernel: portloop, args: "iters=100000000000", memMiB: memMiB, ready: "portloop: ready")
            // Read once the VM has settled, as it stays for its life: the standbys start 30 ms after their device's
            // first process, and each process unmaps its start-up's code 250 ms after it began serving (StartupCode).
            usleep(1_000_000)
            var pss = 0
            var unreadable: [Int32] = []
            for pid in ProcessTree.all(p.processIdentifier) {
                // An unreadable smaps would count as 0 KiB: the figure fails instead of meeting its goal.
                guard let smaps = FileDescriptor.readText("/proc/\(pid)/smaps"), !smaps.isEmpty else {
                    unreadable.append(pid)
                    continue
                }
                pss += BenchKit.Memory.pssExcludingGuestRAM(BenchKit.Memory.parseSmaps(smaps), ramKiB: memMiB * 1024, ramName: "guest-ram")
            }
            for pid in ProcessTree.all(p.processIdentifier).reversed() { kill(pid, SIGKILL) }
            p.waitUntilExit()
            if unreadable.isEmpty && pss > 0 {
                add("memory PSS without guest RAM: \(m.name)", Double(pss) / 1024)
            } else {
                failures["memory PSS without guest RAM: \(m.name)"] = "smaps of pids \(unreadable) unreadable"
            }
        }

        var report = Report(machine: machineInfo(tscKHz: tscKHz), rows: [])
        func row(_ name: String, _ unit: String, baseline: String? = nil, goal: Double? = nil, note: String? = nil) {
            // A runner that failed fails its figure, visibly (no number, and why), even where other repetitions gave one.
            if let why = failures[name] {
                report.rows.append(Row(name: name, unit: unit, samples: Samples(), note: "FAILED: \(why)"))
                return
            }
            guard let s = rows[name] else { return }
            report.rows.append(Row(name: name, unit: unit, samples: s, baseline: baseline, goal: goal, note: note))
        }
        for loop in ExitLoop.all(iterations: 0) {
            let bare = loop.row("bare KVM loop")
            row(bare, "ns/exit")
            for census in loop.floors {
                row(loop.postingBare(census: census), "ns/exit", baseline: bare,
                    note: census ? "the same with the spin census's seats" : "floor: each write posted to a thread over vmm's channel")
            }
            // The goal on these rows only where the interleaved group, which holds it otherwise, did not run.
            row(loop.ours, "ns/exit", baseline: loop.goalBaseline ?? bare, goal: wants("interleaved") ? nil : loop.goal, note: loop.note)
            // The same exits split (per KVM_RUN entry): time inside it against the bare loop's whole exit, and the
            // VMM's own handling between two entries (its share of the bare exit: the row's ratio).
            let oursSplit = ExitLoop.split(loop.ours)
            row(oursSplit.inRun, "ns/exit", baseline: bare, note: "the vCPU inside KVM_RUN")
            row(oursSplit.vmmTime, "ns/exit", baseline: bare, note: "the vcpu process between exit and entry")
            row(loop.baseline, "ns/exit", baseline: loop.goalBaseline ?? bare)
            let baselineSplit = ExitLoop.split(loop.baseline)
            row(baselineSplit.inRun, "ns/exit", baseline: bare)
            row(baselineSplit.vmmTime, "ns/exit", baseline: bare)
            if loop.qemu { for q in qemus { row(loop.row(q.name), "ns/exit", baseline: bare) } }
            // The same rows from the median window of each run (see GuestTiming.steadyNanosecondsPerIteration): what
            // an exit costs when neither this VMM's other processes nor the host interrupt it.
            let bareSteady = ExitLoop.steady(bare)
            row(bareSteady, "ns/exit", note: "each run's median window (a run times about 200)")
            for name in loop.floors.map(loop.postingBare) + [loop.ours, loop.baseline] {
                row(ExitLoop.steady(name), "ns/exit", baseline: loop.goalBaseline.map(ExitLoop.steady) ?? bareSteady)
            }
        }
        for loop in ExitLoop.all(iterations: 0) where wants("interleaved") {
            let bare = loop.interleaved("bare KVM loop")
            row(bare, "ns/exit", note: "turns of 50 ms (20 with --smoke), every runner's guest paused but in its turns; a figure per cycle: its turn's median window")
            let goalBaseline = loop.goalLoop(among: ExitLoop.all(iterations: 0)).map { loop.interleaved("bare KVM loop, \($0.what)") }
            if let goalBaseline { row(goalBaseline, "ns/exit") }
            for census in loop.floors {
                row(loop.interleaved(ExitLoop.postingWho(census: census)), "ns/exit", baseline: bare)
            }
            row(loop.interleaved(loop.oursWho), "ns/exit", baseline: goalBaseline ?? bare, goal: loop.goal, note: loop.note)
            row(loop.interleaved("baseline vmm"), "ns/exit", baseline: goalBaseline ?? bare)
        }
        for loop in ExitLoop.all(iterations: 0) where wants("phases") {
            if let why = phasesUnavailable {
                report.rows.append(Row(name: ExitLoop.phaseRow(loop, "vmm", .whole), unit: "ns", samples: Samples(), note: "not traced: \(why)"))
                continue
            }
            for phase in ExitPhases.Phase.allCases {
                let bare = ExitLoop.phaseRow(loop, "bare KVM loop", phase)
                row(bare, "ns", note: phase == .whole ? "medians of the traced exits; tracing adds its own cost to every exit" : nil)
                row(ExitLoop.phaseRow(loop, "vmm", phase), "ns", baseline: bare)
                row(ExitLoop.phaseRow(loop, "baseline vmm", phase), "ns", baseline: bare)
            }
            let bareMean = ExitLoop.phaseMeanRow(loop, "bare KVM loop")
            row(bareMean, "ns", note: "the mean of the same exits: its distance above the median is what slow exits add")
            row(ExitLoop.phaseMeanRow(loop, "vmm"), "ns", baseline: bareMean)
            row(ExitLoop.phaseMeanRow(loop, "baseline vmm"), "ns", baseline: bareMean)
            let runs = tracedRuns[loop.what] ?? [:]
            let fast = ExitPhases.fastState(runs)
            for who in ["bare KVM loop", "vmm", "baseline vmm"] where runs[who] != nil {
                let name = ExitLoop.phaseRow(loop, who, .whole) + ", fast host state"
                rows[name] = Samples(fast[who] ?? [])
                let kept = "\(fast[who]?.count ?? 0) of \(runs[who]?.count ?? 0) runs"
                row(name, "ns", baseline: who == "bare KVM loop" ? nil : ExitLoop.phaseRow(loop, "bare KVM loop", .whole) + ", fast host state",
                    note: who == "bare KVM loop" ? "runs whose entering KVM_RUN was within 10% of the loop's fastest (the host's slow state makes every phase 1.2-1.4x at once): \(kept)" : kept)
            }
        }
        for kind in Self.interruptKinds {
            let bare = "timer interrupt latency (\(kind)): bare KVM loop"
            row(bare, "us", note: kind == "mean" ? "timerfd waited on by the vCPU thread, KVM_INTERRUPT; after the warm-up"
                : kind == "warm-up mean" ? "the first \(Self.interruptSamples) samples of the run, from the VM's start" : nil)
            row("timer interrupt latency (\(kind)): vmm", "us", baseline: bare, goal: kind == "mean" ? 1.5 : nil)
            row("timer interrupt latency (\(kind)): baseline vmm", "us", baseline: bare)
            for q in qemus {
                let name = "timer interrupt latency (\(kind)): \(q.name)"
                if rows[name] != nil { row(name, "us", baseline: bare) }
                else if unavailable.contains("timer interrupt latency (mean): \(q.name)") && kind == "mean" {
                    report.rows.append(Row(name: name, unit: "us", samples: Samples(), note: "QEMU cannot run this guest on this host (KVM's emulator fails on the guest's 32-bit IRET and QEMU has no fallback)"))
                }
            }
        }
        for mode in BlockPattern.Mode.allCases {
            let host = Self.blkRow(mode, nil, "host pread"), unit = mode == .randread ? "IOPS" : "MB/s"
            row(host, unit, note: "one thread, the same offsets")
            for depth in [1, 32] {
                for m in ["vmm", "qemu microvm"] {
                    let name = Self.blkRow(mode, depth, m)
                    if rows[name] != nil { row(name, unit, baseline: host) }
                    else if let why = failures[name] { report.rows.append(Row(name: name, unit: unit, samples: Samples(), note: why)) }
                }
            }
        }
        row("start-up to the guest's first instruction: vmm", "ms", goal: 15, note: "its first exit, by vmm's clock")
        row("start-up to the guest's first UART byte: vmm", "ms", note: "the same guest's byte at this end of the console pipe")
        row("start-up to first UART byte: vmm", "ms")
        row("start-up to exit: vmm", "ms")
        row("start-up to first UART byte: baseline vmm", "ms", baseline: "start-up to first UART byte: vmm")
        row("start-up to exit: baseline vmm", "ms", baseline: "start-up to exit: vmm")
        row("start-up to the guest's first instruction: baseline vmm", "ms", baseline: "start-up to the guest's first instruction: vmm")
        row("start-up to the guest's first UART byte: baseline vmm", "ms", baseline: "start-up to the guest's first UART byte: vmm")
        row("start-up to the guest's first UART byte: qemu", "ms", baseline: "start-up to the guest's first UART byte: vmm")
        row("start-up to first UART byte: qemu", "ms", baseline: "start-up to first UART byte: vmm")
        row("start-up to exit: qemu", "ms", baseline: "start-up to exit: vmm")
        for device in ["pio", "irqchip"] {
            for what in ["recovery median", "recovery p99", "detection median"] {
                let ours = "\(device) restart, \(what): vmm"
                row(ours, "ms", goal: what == "recovery median" ? 10 : nil,
                    note: what == "recovery median" ? "kill to the next handled request; Cloud Hypervisor's vhost-user reconnect retries every 100 ms" : nil)
                row("\(device) restart, \(what): vmm without a standby process", "ms", baseline: ours)
            }
        }
        for what in ["recovery median", "recovery p99", "detection median"] {
            row("virtio-blk restart, \(what): vmm", "ms", goal: what == "recovery median" ? 10 : nil,
                note: what == "recovery median" ? "1,000 kills; kill to the next completed virtqueue request" : nil)
        }
        row("Linux boot to power-off: wall", "s", note: "spawn to exit, 1 vCPU, 128 MiB")
        row("Linux boot: in KVM_RUN", "s", baseline: "Linux boot to power-off: wall")
        for reason in linuxReasons {
            row("Linux boot: VMM time, \(reason)", "s", baseline: "Linux boot to power-off: wall")
            row("Linux boot: exits, \(reason)", "exits")
        }
        row("MMU translations, page walk every time", "M/s")
        row("MMU translations, software TLB", "M/s", baseline: "MMU translations, page walk every time")
        row("memory PSS without guest RAM: vmm", "MiB", goal: 10)
        if let everyDevice {
            row("memory PSS without guest RAM: \(everyDevice.vmm.name)", "MiB", goal: 10, note: everyDevice.processes)
        }
        row("memory PSS without guest RAM: qemu", "MiB", baseline: "memory PSS without guest RAM: vmm")

        print(report.machine.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "\n"))
        print("")
        print(report.table())
        try FileManager.default.createDirectory(atPath: (json as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try report.json().write(to: URL(fileURLWithPath: json))
        print("\nJSON: \(json)")
    }

    /// Configs/default.json's kernel command line (run from the repository root, as the scripts do).
    static func defaultBootArgs() throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: "Configs/default.json"))
        guard let top = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let boot = top["boot-source"] as? [String: Any], let args = boot["boot_args"] as? String else {
            throw ValidationError("Configs/default.json has no boot-source.boot_args")
        }
        return args
    }

    /// Why a run gave no figure: its exit status and last line of output.
    static func why(_ r: GuestRun) -> String {
        "status \(r.status), \(r.output.split(whereSeparator: \.isNewline).last.map(String.init) ?? "no output")"
    }

    /// "blk randread 4 KiB, depth 32: vmm"; the host's row has no depth.
    static func blkRow(_ mode: BlockPattern.Mode, _ depth: Int?, _ who: String) -> String {
        "blk \(mode.rawValue) \(mode == .randread ? "4" : "128") KiB\(depth.map { ", depth \($0)" } ?? ""): \(who)"
    }

    func log(_ s: String) { FileHandle.standardError.write(Data("vmm-bench: \(s)\n".utf8)) }

    func ensureGuests() throws -> String {
        let wanted = ["portloop.elf", "portloop64.elf", "firstbyte.elf", "hello.elf", "irqlatency.elf", "virtio.elf", "uartstress.elf", "timerstress.elf"]
        // Rebuilt when one is missing or older than a source (run from the repository root, as the scripts do).
        func modified(_ path: String) -> Double? {
            var st = stat()
            return stat(path, &st) == 0 ? Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9 : nil
        }
        let sources = (try? FileManager.default.contentsOfDirectory(atPath: "Tests/Guests")) ?? []
        let newest = sources.compactMap { modified("Tests/Guests/" + $0) }.max() ?? 0
        guard wanted.contains(where: { (modified(guests + "/" + $0) ?? -1) < newest }) else { return guests }
        do { return try TestGuests.build(sourceRoot: ".", into: guests) } catch {
            throw ValidationError("\(error) (run from the repository root)")
        }
    }

    /// The bare loop of `loop` as a process of its own (`vmm-bench bare-loop`), for the interleaved group.
    /// `options`: more `bare-loop` options (the posting floors').
    func bareTurnRunner(_ loop: ExitLoop, name: String, kernel: String, pin: Int?, options: [String] = []) -> TurnRunner {
        TurnRunner(name: name, process: {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            p.arguments = ["bare-loop", "--kernel", kernel, "--cmdline", loop.args, "--cpu", "\(pin ?? -1)"] + options
            let out = Pipe()
            p.standardOutput = out
            p.standardInput = FileHandle.nullDevice
            return (p, out)
        })
    }

    func machineInfo(tscKHz: Int) -> [String: String] {
        var info: [String: String] = ["date": ISO8601DateFormatter().string(from: Date()), "tsc_khz": "\(tscKHz)",
                                      "iterations": "\(smoke ? 1000 : iterations)", "repetitions": "\(smoke ? 1 : repetitions)"]
        var u = utsname()
        uname(&u)
        info["kernel"] = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpuinfo = FileDescriptor.readText("/proc/cpuinfo") ?? ""
        if let model = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("model name") }) {
            info["cpu"] = model.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        info["cpus"] = "\(sysconf(Int32(_SC_NPROCESSORS_ONLN)))"
        info["kvm"] = cpuinfo.contains(" hypervisor") ? "nested (this host is itself a guest)" : "bare metal"
        return info
    }
}

/// The summary of vmm's fault-injection report (`--fault-report`).
struct FaultReport {
    var faults: Int
    var recoveryMedianMs: Double?, recoveryP99Ms: Double?, detectionMedianMs: Double?

    static func read(_ path: String) -> FaultReport? {
        guard let data = FileManager.default.contents(atPath: path),
              let top = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let summary = top["summary"] as? [String: Any], let faults = summary["faults"] as? Int else { return nil }
        return FaultReport(faults: faults, recoveryMedianMs: summary["recovery_median_ms"] as? Double,
                           recoveryP99Ms: summary["recovery_p99_ms"] as? Double, detectionMedianMs: summary["detection_median_ms"] as? Double)
    }
}

/// One exit-cost figure: a CPL3 loop of one kind of device access, run on the bare loop, vmm and (32-bit guests
/// only: QEMU's multiboot loader takes no ELF64) QEMU.
struct ExitLoop {
    let what: String
    let guest: String
    let args: String
    /// The process that answers the access in vmm.
    let server: String
    var qemu = false
    var goal: Double?
    /// The row the goal's ratio is taken against, when not this loop's own bare row.
    var goalBaseline: String?
    /// vmm queues the loop's writes in KVM's coalesced ring (its default for the UART and the IOAPIC's register
    /// select): the guest's write does not exit, and the row shows what it costs the guest all the same. It runs no
    /// posting floors and is not traced by phases: there is no exit to compare.
    var coalesced = false
    /// More "vmm" settings for vmm's runs of this loop (and the baseline build's, which must know them).
    var vmmSettings = ""
    var note: String?

    func row(_ who: String) -> String { "\(what): \(who)" }
    /// `m` with this loop's settings, when it is a build of this vmm.
    func configured(_ m: VMMUnderTest) -> VMMUnderTest {
        guard var ours = m as? OurVMM else { return m }
        ours.vmmSettings += vmmSettings
        return ours
    }
    /// This project's vmm, as its rows name it.
    var oursWho: String { "vmm (\(server) process)" }
    /// The row of this project's vmm.
    var ours: String { row(oursWho) }
    /// A row of the interleaved group.
    func interleaved(_ who: String) -> String { "\(what), interleaved: \(who)" }
    /// The row of the `--baseline-vmm` build.
    var baseline: String { row("baseline vmm") }
    /// A row of the phases group: `who`'s median time in `phase` of this loop's exits.
    static func phaseRow(_ loop: ExitLoop, _ who: String, _ phase: ExitPhases.Phase) -> String {
        "\(loop.what), traced: \(who): \(phase.rawValue)"
    }
    /// The phases group's mean whole exit of `who` in this loop.
    static func phaseMeanRow(_ loop: ExitLoop, _ who: String) -> String { "\(loop.what), traced: \(who): whole exit, mean" }
    /// A port-write loop also runs on the bare loop that posts each write to a device thread (`runPosting`), without
    /// and with the spin census: the floors' census settings, none for other loops.
    var floors: [Bool] { args.contains("op=out") && !coalesced ? [false, true] : [] }
    func postingBare(census: Bool) -> String { row(Self.postingWho(census: census)) }
    /// The posting floor, as its rows name it.
    static func postingWho(census: Bool) -> String { census ? "bare KVM loop posting, spin census" : "bare KVM loop posting to a thread" }
    /// The loop among `loops` whose bare row is this loop's goal baseline (the LAPIC read's: the 64-bit port read).
    func goalLoop(among loops: [ExitLoop]) -> ExitLoop? {
        goalBaseline.flatMap { goal in loops.first { $0.row("bare KVM loop") == goal } }
    }
    /// A row's figure from its runs' median windows.
    static func steady(_ row: String) -> String { row + ", steady" }
    /// Exits per timed window: about 200 windows a run.
    static func windowSize(iterations: Int, windows: Int = 200) -> Int { max(1, iterations / windows) }
    /// The rows that split a vmm row's exits: time inside KVM_RUN, and the vcpu process's own time.
    static func split(_ row: String) -> (inRun: String, vmmTime: String) { (row + ": in KVM_RUN", row + ": VMM time") }

    /// The loops, the 64-bit and MMIO ones with a quarter of `iterations` (an exit costs about twice a 32-bit
    /// port exit there), each timed in `windows` windows.
    static func all(iterations: Int, windows: Int = 200) -> [ExitLoop] {
        let wide = max(1, iterations / 4)
        let (narrow, wideWindow) = (windowSize(iterations: iterations, windows: windows), windowSize(iterations: wide, windows: windows))
        // Half a second or so of untimed accesses first (a 32-bit exit takes ~12 us here, a 64-bit one ~40): vmm's
        // start-up is still going on in its first ~300 ms (standbys starting, each process unmapping its start-up's
        // code 250 ms in and faulting back what it runs), which is start-up's cost, not an exit's.
        let (warm, wideWarm) = (min(40_000, iterations), min(12_000, wide))
        let narrowRun = "warmup=\(warm) window=\(narrow) iters=\(iterations)"
        let wideRun = "warmup=\(wideWarm) window=\(wideWindow) iters=\(wide)"
        let exitPath = #", "coalesced_writes": false"#
        return [
            ExitLoop(what: "port in, 32-bit", guest: "portloop.elf", args: "\(narrowRun) op=in port=1021", server: "pio",
                     qemu: true, goal: 1.05, note: "the UART's LSR, answered from the pio's published copy"),
            // No goal: a read the device must answer itself costs a round trip to another process, which the
            // goals' rows (the reads a guest polls, published by the device) leave out; this row shows what it costs.
            ExitLoop(what: "port read round trip, 32-bit", guest: "portloop.elf", args: "\(narrowRun) op=in port=1016", server: "pio",
                     qemu: true, note: "the UART's data register (a read with a side effect): answered by the pio process"),
            // The posted writes' rows time the exit path: vmm with coalescing off (its default lets KVM queue these
            // writes with no exit, the coalesced rows below).
            ExitLoop(what: "port out, 32-bit", guest: "portloop.elf", args: "\(narrowRun) op=out port=1023", server: "pio",
                     qemu: true, goal: 1.03, vmmSettings: exitPath, note: "posted write, coalescing off: the exit path"),
            ExitLoop(what: "port out coalesced, 32-bit", guest: "portloop.elf", args: "\(narrowRun) op=out port=1023", server: "pio",
                     coalesced: true, note: "posted write KVM queues (vmm's default for the UART): no exit"),
            ExitLoop(what: "port in, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=in port=1021", server: "pio",
                     goal: 1.05, note: "the UART's LSR, answered from the pio's published copy"),
            ExitLoop(what: "port out, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=out port=1023", server: "pio",
                     goal: 1.03, vmmSettings: exitPath, note: "posted write, coalescing off: the exit path"),
            ExitLoop(what: "port out coalesced, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=out port=1023", server: "pio",
                     coalesced: true, note: "posted write KVM queues (vmm's default for the UART): no exit"),
            ExitLoop(what: "LAPIC read, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=read addr=4276092976", server: "irqchip",
                     goal: 1.10, goalBaseline: "port in, 64-bit: bare KVM loop", note: "version register, against a bare port exit"),
            ExitLoop(what: "IOAPIC write, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=write addr=4273995776", server: "irqchip",
                     goal: 1.03, vmmSettings: exitPath, note: "register select, posted, coalescing off: the exit path"),
            ExitLoop(what: "IOAPIC write coalesced, 64-bit", guest: "portloop64.elf", args: "\(wideRun) op=write addr=4273995776",
                     server: "irqchip", coalesced: true, note: "register select KVM queues (vmm's default): no exit"),
        ]
    }
}
