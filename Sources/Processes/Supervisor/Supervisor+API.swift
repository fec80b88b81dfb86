import CLinux
import Config
import Devices
import Glibc
import Machine
import System

/// What the supervisor keeps for the API (`vmm run --api-sock`) and the metrics: the pause pipe to the vcpu process,
/// pause and resume requests waiting for the vcpu process's answer, the metrics file opened at start.
final class SupervisorAPI {
    let control: VMControl?
    /// The write end of the pause pipe (`P`, `R`); its read end is the vcpu process's `pauseFD`.
    var pausePipe: FileDescriptor.Box?
    /// Requests waiting for the vcpu process's answer, with what they asked (true: pause).
    var pauseReplies: [(pause: Bool, respond: VMControl.Respond, deadline: UInt64)] = []
    /// Opened before any helper starts: the API can change nothing about which files vmm opens after InstanceStart.
    var metricsFD: FileDescriptor.Box?
    var nextMetricsDue: UInt64?
    var guestBootedMs: Int?
    /// The drives' backing files, which `PATCH /drives/{id}` replaces on a running VM.
    var drives: [Supervisor.DriveImage] = []
    var helpersStartedMs: Int?
    /// The vCPUs' run statistics, mapped read-only.
    var vcpuStatistics: VCPUStatistics?

    init(control: VMControl?) { self.control = control }

    /// How long a pause or resume may take before the request is answered with an error: a vCPU waiting on a device
    /// that restarts reaches the gate only when its access completes.
    static let pauseTimeoutNanoseconds: UInt64 = 5_000_000_000
    /// Firecracker writes its metrics every 60 s.
    static let metricsPeriodNanoseconds: UInt64 = 60_000_000_000
}

extension Supervisor {
    /// Opens `metrics.metrics_path` (which must exist, a file or a FIFO) before any helper runs. Read-write and
    /// non-blocking, as Firecracker opens it: a FIFO without a reader neither blocks vmm nor fails.
    func openMetrics() throws {
        guard let path = config.metrics?.metricsPath else { return }
        do { api.metricsFD = FileDescriptor.Box(try FileDescriptor.open(path, O_RDWR | O_NONBLOCK | O_APPEND)) } catch {
            throw HostSetupError(description: "metrics.metrics_path: \(error)")
        }
        api.nextMetricsDue = monotonicNanoseconds() + SupervisorAPI.metricsPeriodNanoseconds
    }

    /// The pause pipe exists only when an API can ask for a pause.
    func makePausePipe() throws -> FileDescriptor.Box? {
        guard api.control != nil else { return nil }
        let pipe = try Pipe()
        api.pausePipe = FileDescriptor.Box(try pipe.writeEnd.duplicate())
        return FileDescriptor.Box(try pipe.readEnd.duplicate())
    }

    /// Runs the API's commands (on the supervisor's thread: the slots are not shared).
    func serveAPI(_ slots: [Slot], console: ConsolePump) {
        guard let control = api.control else { return }
        for (command, respond) in control.take() {
            switch command {
            case .pause, .resume:
                let pause = command == .pause
                if (control.state == .paused) == pause && api.pauseReplies.isEmpty {
                    respond(.done)  // already so: Firecracker answers 204 too
                    continue
                }
                guard let pipe = api.pausePipe else { respond(.refused("no pause pipe")); continue }
                var byte = UInt8(ascii: pause ? "P" : "R")
                guard Glibc.write(pipe.raw, &byte, 1) == 1 else {
                    respond(.refused("telling the vcpu process failed: errno \(errno)"))
                    continue
                }
                api.pauseReplies.append((pause, respond, monotonicNanoseconds() + SupervisorAPI.pauseTimeoutNanoseconds))
            case .devices:
                respond(.devices(deviceReports(slots)))
            case .flushMetrics:
                if api.metricsFD == nil {
                    respond(.refused("no metrics configured (PUT /metrics before InstanceStart, or \"metrics\" in the config file)"))
                } else {
                    writeMetrics(slots)
                    respond(.done)
                }
            case .updateDrive(let id, let path):
                respond(replaceDrive(id, path: path, slots))
            case .sendCtrlAltDel:
                // Through the console's key stream to the pio process, whose i8042 keyboard types them (IRQ 1
                // once the guest's driver enabled it); a restarted pio process resumes the stream where it was.
                if console.sendKeys(I8042.ctrlAltDel) { respond(.done) } else {
                    respond(.refused("the i8042 keyboard's buffer is full: the guest has not read the keys sent before"))
                }
            }
        }
    }

    /// A running drive's new backing file: opened and locked here (the drive's process can open nothing), then sent
    /// to the drive's process, which swaps it in between two requests and tells the guest its capacity may differ.
    /// A restarted process and the next standby get the new file; the standby started with the old one is replaced.
    func replaceDrive(_ id: String, path: String, _ slots: [Slot]) -> VMControl.Reply {
        guard let image = api.drives.first(where: { $0.drive.driveID == id }) else { return .refused("drives[\(id)]: no such drive") }
        var drive = image.drive
        drive.pathOnHost = path
        let file: FileDescriptor.Box
        do { file = try Self.openImage(drive) } catch { return .refused(error.description) }
        image.file = file
        image.drive = drive
        image.replaced = true
        let name = Server(.virtioBlock, instance: api.drives.firstIndex { $0 === image } ?? 0).description
        let sent = vmm_send_with_fds(image.updates.supervisor.raw, "F", 1, [file.raw], 1)
        if sent != 1 { Log.warning("\(name): handing over the new backing file failed (errno \(errno)); its next process gets it") }
        if let slot = slots.first(where: { $0.name == name }), let standby = slot.standby {
            standby.process.kill(SIGKILL)
            standby.ended = try? standby.process.reap(block: true)
            slot.standby = nil
            slot.standbyDue = monotonicNanoseconds()
        }
        Log.info("\(name): backing file now \(path)")
        return .done
    }

    /// The vcpu process answered a pause or resume.
    func pauseAnswered(_ paused: Bool) {
        api.control?.setState(paused ? .paused : .running)
        Log.info(paused ? "VM paused: every vCPU is outside KVM_RUN" : "VM resumed")
        // Answers come in the order the requests were written.
        if let i = api.pauseReplies.firstIndex(where: { $0.pause == paused }) {
            let waiting = api.pauseReplies.remove(at: i)
            waiting.respond(.done)
        }
    }

    /// Requests the vcpu process has not answered in time, and the periodic metrics.
    func apiTimers(_ slots: [Slot], now: UInt64) {
        api.pauseReplies.removeAll { waiting in
            guard now >= waiting.deadline else { return false }
            waiting.respond(.refused("the vCPUs did not \(waiting.pause ? "pause" : "resume") within \(SupervisorAPI.pauseTimeoutNanoseconds / 1_000_000_000) s"))
            return true
        }
        if let due = api.nextMetricsDue, now >= due {
            writeMetrics(slots)
            api.nextMetricsDue = now + SupervisorAPI.metricsPeriodNanoseconds
        }
    }

    /// The earliest time the loop must wake for the API.
    var apiWake: UInt64? {
        ([api.nextMetricsDue] + api.pauseReplies.map { Optional($0.deadline) }).compactMap { $0 }.min()
    }

    func deviceReports(_ slots: [Slot]) -> [VMControl.Device] {
        slots.map { slot in
            let state = slot.broken ? "broken" : slot.helper.ended != nil ? (slot.restartDue != nil ? "restarting" : "ended") : "running"
            return VMControl.Device(name: slot.name, pid: slot.helper.process.pid, restarts: slot.restarts, state: state,
                                    handledRequests: slot.channels.reduce(0) { $0 &+ $1.handledRequests() })
        }
    }

    /// When the VM has stopped: the vCPUs' statistics in one log line (what a benchmark splitting wall time into
    /// KVM_RUN and VMM time reads), and a last metrics line.
    func reportFinalStatistics(_ slots: [Slot]) {
        guard let statistics = api.vcpuStatistics else { return }
        let total = statistics.total()
        Log.info("vcpu statistics (all vCPUs): \(total.summary)")
        // Hostile numbers only printed: a vcpu process that writes nonsense here misreports only itself.
        if total.firstExitAt > startedAt {
            let ms = Double((total.firstExitAt - startedAt) / 10_000) / 100
            Log.info("the guest's first exit came \(ms) ms after the supervisor started (first_exit_monotonic_ns=\(total.firstExitAt))")
        }
        writeMetrics(slots)
    }

    /// The `vcpu` object of a metrics line: the vCPUs' statistics summed (`kvm_run_entries`, `kvm_run_ns`,
    /// `coalesced_writes`, and per exit reason `exits` and `vmm_ns`), then the same per vCPU under `vcpus`.
    static func vcpuMetrics(_ statistics: VCPUStatistics) -> JSONValue {
        func object(_ t: VCPUStatistics.Totals) -> [(key: String, value: JSONValue)] {
            [("kvm_run_entries", .number("\(t.entries)")), ("kvm_run_ns", .number("\(t.runNanoseconds)")),
             ("coalesced_writes", .number("\(t.coalescedWrites)")),
             ("exits", .object(t.byReason.map { ($0.name, .object([("count", .number("\($0.exits)")), ("vmm_ns", .number("\($0.nanoseconds)"))])) }))]
        }
        // Each vCPU's block read once, the total summed from those reads: the vCPUs keep counting meanwhile, and
        // the line must add up.
        let perVCPU = statistics.readAll()
        return .object(object(.sum(perVCPU)) + [("vcpus", .array(perVCPU.map { .object(object($0)) }))])
    }

    /// One line of Firecracker-style metrics (a JSON object per flush) with what the supervisor knows: uptime, the
    /// guest's boot-timer time, the API's request count, the vCPUs' statistics (KVM_RUN entries and time, exits
    /// and VMM time by reason), each device process's pid, restarts, state and handled requests.
    func writeMetrics(_ slots: [Slot]) {
        guard let fd = api.metricsFD else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let devices: [(key: String, value: JSONValue)] = deviceReports(slots).map { d in
            (d.name, .object([("pid", .number("\(d.pid)")), ("restarts", .number("\(d.restarts)")), ("state", .string(d.state)),
                              ("handled_requests", .number("\(d.handledRequests)"))]))
        }
        let line: JSONValue = .object([
            ("utc_timestamp_ms", .number("\(Int(now.tv_sec) * 1000 + Int(now.tv_nsec) / 1_000_000)")),
            ("vmm", .object([("uptime_ms", .number("\((monotonicNanoseconds() - startedAt) / 1_000_000)")),
                             ("helpers_started_ms", api.helpersStartedMs.map { .number("\($0)") } ?? .null),
                             ("guest_boot_time_ms", api.guestBootedMs.map { .number("\($0)") } ?? .null),
                             ("state", .string(api.control?.state.rawValue ?? VMControl.State.running.rawValue))])),
            ("api_server", .object([("requests", .number("\(api.control?.apiRequests.load(ordering: .relaxed) ?? 0)"))])),
            ("vcpu", api.vcpuStatistics.map(Self.vcpuMetrics) ?? .null),
            ("devices", .object(devices)),
        ])
        let bytes = Array((line.text + "\n").utf8)
        // Non-blocking: a FIFO nobody reads loses the line rather than stopping the supervisor.
        if bytes.withUnsafeBytes({ Glibc.write(fd.raw, $0.baseAddress, $0.count) }) != bytes.count {
            Log.info("metrics line not written (errno \(errno))")
        }
    }
}
