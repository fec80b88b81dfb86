import Config
import Glibc
import Synchronization
import System

/// The bridge between the API server's thread and the supervisor's poll loop. The API puts commands in a locked
/// queue and rings an eventfd the loop polls; the supervisor runs each on its own thread (where the helpers, their
/// pipes and slots live, unlocked) and answers through the command's reply closure, which the API turns into an
/// HTTP response on its own thread. What the API reads often (the VM's state) is kept here under a lock.
public final class VMControl: Sendable {
    /// A request that needs the running VM.
    public enum Command: Sendable, Equatable {
        case pause, resume, sendCtrlAltDel, flushMetrics, devices
        /// A running drive gets another backing file (`PATCH /drives/{id}` with `path_on_host`), checked already.
        case updateDrive(id: String, path: String)
    }

    /// Firecracker's instance states (`GET /`).
    public enum State: String, Sendable {
        case notStarted = "Not started", running = "Running", paused = "Paused"
    }

    /// One device process, for `GET /vmm/devices` and the metrics.
    public struct Device: Sendable, Equatable {
        public var name: String
        public var pid: Int32
        public var restarts: Int
        /// "running", "restarting", "broken" or "ended".
        public var state: String
        /// Requests it has handled on its channels (0 for the vcpu process, which serves none).
        public var handledRequests: UInt64
    }

    public enum Reply: Sendable {
        case done
        case devices([Device])
        /// The request cannot be carried out; the text says why (a 400's fault_message).
        case refused(String)
    }

    public typealias Respond = @Sendable (Reply) -> Void

    private struct Pending: Sendable {
        var commands: [(Command, Respond)] = []
        var start: (VMConfig, Respond)?
        var startReply: Respond?
        var state = State.notStarted
        var ended = false
    }
    private let pending = Mutex(Pending())
    private let doorbell: EventFD
    /// Requests the API server has answered, for the metrics (written by the API's thread).
    public let apiRequests = Atomic<Int>(0)

    public init() throws(SystemError) { doorbell = try EventFD() }

    /// What the supervisor polls.
    public var pollFD: Int32 { doorbell.raw }

    public var state: State { pending.withLock { $0.state } }

    func setState(_ s: State) { pending.withLock { $0.state = s } }

    /// Asks the supervisor; `respond` is called once, on the supervisor's thread (or at once when the VM has ended
    /// or has not started).
    public func submit(_ command: Command, respond: @escaping Respond) {
        let answer: Reply? = pending.withLock { p in
            if p.ended { return .refused("the VM has ended") }
            if p.state == .notStarted { return .refused("the VM is not started yet (PUT /actions InstanceStart)") }
            p.commands.append((command, respond))
            return nil
        }
        if let answer { respond(answer) } else { try? doorbell.signal() }
    }

    /// InstanceStart: hands the config to the main thread, which starts the supervisor; `respond` is called once the
    /// helpers run (or with why they could not be started).
    public func requestStart(_ config: VMConfig, respond: @escaping Respond) {
        let accepted = pending.withLock { p -> Bool in
            guard p.start == nil, p.startReply == nil, p.state == .notStarted, !p.ended else { return false }
            p.start = (config, respond)
            return true
        }
        if accepted { try? doorbell.signal() } else { respond(.refused("InstanceStart was requested already")) }
    }

    /// The main thread, before the VM exists: waits for InstanceStart or a signal on `signals`. nil: a signal came.
    public func waitForStart(signals: Int32) -> VMConfig? {
        while true {
            if let config = pending.withLock({ p -> VMConfig? in
                guard let (config, respond) = p.start else { return nil }
                p.start = nil
                p.startReply = respond
                return config
            }) { return config }
            guard let ready = try? Poll.wait([signals, doorbell.raw], timeoutMs: -1) else { continue }
            if !ready[0].isEmpty { return nil }
            var drain: UInt64 = 0
            _ = Glibc.read(doorbell.raw, &drain, 8)
        }
    }

    /// The supervisor: the helpers run (nil) or could not be started (why).
    public func startFinished(failure: String?) {
        let respond = pending.withLock { p -> Respond? in
            if failure == nil { p.state = .running }
            defer { p.startReply = nil }
            return p.startReply
        }
        respond?(failure.map { .refused($0) } ?? .done)
    }

    /// The supervisor's loop takes the commands waiting.
    func take() -> [(Command, Respond)] {
        var drain: UInt64 = 0
        _ = Glibc.read(doorbell.raw, &drain, 8)
        return pending.withLock { p in
            defer { p.commands = [] }
            return p.commands
        }
    }

    /// The VM has ended: what still waits is refused, and so is anything asked later.
    public func end() {
        let waiting = pending.withLock { p -> [Respond] in
            p.ended = true
            defer { p.commands = [] }
            return p.commands.map(\.1) + (p.startReply.map { [$0] } ?? [])
        }
        for respond in waiting { respond(.refused("the VM has ended")) }
    }
}
