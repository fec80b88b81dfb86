import Glibc
import System

/// The device side of a channel: takes requests from every lane in order and answers the ones that need it.
public struct DeviceServer: @unchecked Sendable {
    private var requests: [RingConsumer]
    private var responses: [RingProducer]
    private let responseDoorbells: [Int32]
    public let deviceDoorbell: Int32
    public let policy: WaitPolicy
    public let region: ChannelRegion
    /// How long this device spins for its next request, learnt from the gaps between requests.
    public var window: SpinWindow
    /// Run once, when the process first blocks after its start-up (see `SettleAction`).
    public var settling: SettleAction?
    private var nextLane = 0
    /// Requests taken since the last `commit()`.
    public private(set) var uncommitted = 0
    /// Lanes whose producer published impossible ring indices: no longer read (the peer is broken or hostile, and
    /// a corrupt index would otherwise be found again on every wake-up).
    public private(set) var brokenLanes: Set<Int> = []
    /// At most this many requests are taken between commits, so that a producer waiting on a full ring is not
    /// held back for long and one busy lane cannot keep the device from its other work.
    public var batchLimit: Int { max(1, region.layout.ring.capacity / 2) }

    public init(region: ChannelRegion, deviceDoorbell: Int32, responseDoorbells: [Int32], policy: WaitPolicy) {
        precondition(responseDoorbells.count == region.layout.lanes)
        self.region = region
        requests = (0..<region.layout.lanes).map { RingConsumer(region.requestRing($0)) }
        responses = (0..<region.layout.lanes).map { RingProducer(region.responseRing($0)) }
        self.responseDoorbells = responseDoorbells
        self.deviceDoorbell = deviceDoorbell
        self.policy = policy
        window = policy.window()
        // What a predecessor published may be ahead of what this process restores: nothing is answered from the
        // copy until this process publishes its own.
        region.readMirror?.invalidate()
    }

    /// The next request from any lane, or nil when none is waiting or `batchLimit` requests await a `commit()`.
    /// A malformed request is consumed and thrown together with its lane so that the caller can answer a read
    /// with all-ones and keep going.
    public mutating func poll() throws(LaneError) -> (lane: Int, message: Message)? {
        guard uncommitted < batchLimit else { return nil }
        for i in 0..<requests.count {
            let lane = (nextLane + i) % requests.count
            guard !brokenLanes.contains(lane) else { continue }
            let message: Message?
            do { message = try requests[lane].take() } catch {
                uncommitted += 1
                if case .indexOutOfRange = error { brokenLanes.insert(lane) }
                throw LaneError(lane: lane, error: error)
            }
            if let message {
                nextLane = lane
                uncommitted += 1
                return (lane, message)
            }
        }
        return nil
    }

    /// Declares every request taken so far handled: their effects are out (console bytes written, state
    /// changed). Until then a request counts as not yet applied for whoever watches the channel. A restartable
    /// device's state is recorded first, with the lanes' positions, in one atomic step: a process killed at any
    /// instruction leaves a successor either the state before these requests (and it handles them again) or the
    /// state after them (and it goes on from there), never half of it.
    ///
    /// `answering`: the lane of the request being handled, when it is answered only after this commit (a sync): it
    /// stays uncommitted, so that a process killed between the commit and the answer leaves it to its successor
    /// to handle and answer again, instead of leaving the vCPU waiting for an answer nobody owes it.
    public mutating func commit(answering lane: Int? = nil) {
        let positions = requests.indices.map { requests[$0].position - (lane == $0 && requests[$0].position > 0 ? 1 : 0) }
        if let restartable {
            var payload = [UInt8]()
            payload.reserveCapacity(4 + 8 * requests.count + 256)
            Self.append(UInt64(requests.count), to: &payload)
            for p in positions { Self.append(p, to: &payload) }
            payload += restartable.device.snapshot()
            do { try restartable.store.commit(payload) } catch {
                preconditionFailure("a device's state outgrew its channel's state area: \(error)")
            }
        }
        for (r, p) in zip(requests, positions) { r.publishTaken(upTo: p) }
        uncommitted = lane == nil ? 0 : 1
        restartable?.device.didCommit()
    }

    /// A restartable device and where its commits go.
    private var restartable: (device: RestartableDevice, store: CommittedState)?

    /// Makes the device survive its own process: from now on every commit records its state (see `commit()`). A
    /// process started in place of a dead one gets back the state its predecessor committed last, to restore, and
    /// resumes each lane where that commit left it; nil for a fresh device (or an unusable record, which is said).
    public mutating func makeRestartable(_ device: RestartableDevice) -> [UInt8]? {
        let store = CommittedState(region.state)
        restartable = (device, store)
        guard let payload = store.load() else { return nil }
        var offset = 0
        func word() -> UInt64? {
            guard offset + 8 <= payload.count else { return nil }
            defer { offset += 8 }
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(payload[offset + $1]) << (8 * $1) }
        }
        guard let lanes = word(), lanes == UInt64(requests.count) else { return nil }
        var positions: [UInt64] = []
        for _ in requests.indices {
            guard let position = word() else { return nil }
            positions.append(position)
        }
        resume(at: positions)
        return Array(payload[offset...])
    }

    /// Publishes the reads the vCPUs may answer themselves from now until the next publication (see ReadMirror):
    /// `reads` are the ports whose read has no side effect now, with their values, reflecting every request taken
    /// so far. Call it after handling what was taken and whenever the device changed on its own.
    public func publishReads(_ reads: [(port: UInt16, value: UInt8)]) {
        region.readMirror?.publish(reads, handled: requests.map(\.position))
    }

    /// Takes the published reads away until the next `publishReads`: call it before the device changes on its own
    /// (input arriving), since such a change can raise an interrupt whose handler must not read the older copy.
    public func withdrawReads() {
        region.readMirror?.invalidate()
    }

    /// Tells the vCPUs this process serves the channel now (after a restart the supervisor leaves it marked
    /// restarting until then, so that a vCPU keeps waiting for a successor that is slow to start, not only for one
    /// that is slow to be started).
    public func announceServing() {
        if region.deviceStatus != .serving { region.deviceStatus = .serving }
    }

    /// Where each lane's next request is: what a restartable device serving more than one channel commits, in its
    /// own state, for the channels other than the one it commits to.
    public var positions: [UInt64] { requests.map(\.position) }

    /// Continues each lane at the position a predecessor committed (see `positions`). A lane whose position the
    /// producer never wrote is no longer read.
    public mutating func resume(at positions: [UInt64]) {
        precondition(positions.count == requests.count, "one position per lane")
        for lane in requests.indices where !requests[lane].resume(at: positions[lane]) { brokenLanes.insert(lane) }
    }

    private static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }

    /// The next well-formed request, nil when none is waiting. Malformed ones are consumed and handed to
    /// `malformed` (a device answers a hostile peer by dropping its message, never by stopping).
    public mutating func next(malformed: (LaneError) -> Void) -> (lane: Int, message: Message)? {
        while true {
            do { return try poll() } catch { malformed(error) }
        }
    }

    /// Sends the answer to `request` on `lane`.
    public mutating func respond(lane: Int, to request: Message, data: UInt64) throws(ChannelError) {
        let answer = Message(sequence: request.sequence, operation: .response, size: request.size,
                             address: request.address, data: data)
        while true {
            let pushed: Bool
            do { pushed = try responses[lane].push(answer) } catch { throw .peer(error) }
            if pushed { break }
            usleep(50)  // the vcpu side drains answers as it takes them; a full response ring is transient
        }
        if responses[lane].consumerSleeping() { try ring(responseDoorbells[lane]) }
    }

    /// Commits what was taken, then waits until a request is waiting or one of `extra` descriptors is readable;
    /// returns the readiness of `extra`. Spins first, then announces sleep on every lane and blocks.
    ///
    /// A restartable device commits only before it blocks (or when `batchLimit` requests await a commit): recording
    /// its state costs microseconds, and a request that arrives while it spins is answered without that delay.
    /// What it took meanwhile stays uncommitted, which is safe: a successor handles those requests again.
    public mutating func wait(extra: [Int32], timeoutMs: Int32 = -1) throws(ChannelError) -> [Poll.Event] {
        var window = self.window
        defer { self.window = window }
        if restartable == nil || uncommitted >= batchLimit { commit() }
        guard uncommitted > 0 else { return try Self.wait([self], extra: extra, timeoutMs: timeoutMs, window: &window) }
        settling?.pass()
        let start = monotonicNanoseconds()
        let live = requests.indices.filter { !brokenLanes.contains($0) }.map { requests[$0] }
        if spin(window: &window, census: policy.census, until: { live.contains { $0.hasMessages() } }, extra: Self.anyReady(extra)) {
            window.learn(waited: monotonicNanoseconds() - start, caught: true)
            return [Poll.Event](repeating: [], count: extra.count)
        }
        commit()
        return try Self.wait([self], extra: extra, timeoutMs: timeoutMs, window: &window, spunSince: start)
    }

    /// The same over several channels at once (the irqchip serves the vCPUs' channel and the devices' lines), with
    /// one window for all. Each server must be committed first. `spunSince`: when the caller's own spin began, if it
    /// spun already (then this blocks at once, and learns from the whole wait).
    public static func wait(_ servers: [DeviceServer], extra: [Int32], timeoutMs: Int32 = -1,
                            window: inout SpinWindow, spunSince: UInt64? = nil) throws(ChannelError) -> [Poll.Event] {
        precondition(servers.allSatisfy { $0.uncommitted == 0 }, "commit before waiting")
        let settling = servers.lazy.compactMap(\.settling).first
        if spunSince == nil { settling?.pass() }  // a caller that spun itself passed it already
        let rings = servers.flatMap { s in s.requests.indices.filter { !s.brokenLanes.contains($0) }.map { s.requests[$0] } }
        let none = [Poll.Event](repeating: [], count: extra.count)
        let start = spunSince ?? monotonicNanoseconds()
        if spunSince == nil,
           spin(window: &window, census: servers.first?.policy.census, until: { rings.contains { $0.hasMessages() } }, extra: anyReady(extra)) {
            window.learn(waited: monotonicNanoseconds() - start, caught: true)
            return none
        }
        for r in rings { r.setSleeping(true) }
        defer {
            for r in rings { r.setSleeping(false) }
            window.learn(waited: monotonicNanoseconds() - start, caught: false)
        }
        if rings.contains(where: { $0.hasMessages() }) { return none }
        let doorbells = servers.map(\.deviceDoorbell)
        let ready: [Poll.Event]
        do { ready = try SettleAction.wait(doorbells + extra, timeoutMs: timeoutMs, settling: settling) } catch { throw .system(error) }
        for (i, d) in doorbells.enumerated() where ready[i].contains(.readable) { drain(d) }
        return Array(ready.dropFirst(doorbells.count))
    }

    /// While spinning: whether one of `fds` (timers, a console, notifications) became ready, so that a long spin
    /// window does not hold them back. nil when there are none.
    static func anyReady(_ fds: [Int32]) -> (() -> Bool)? {
        guard !fds.isEmpty else { return nil }
        return { ((try? Poll.wait(fds, timeoutMs: 0)) ?? []).contains { !$0.isEmpty } }
    }
}

/// A device whose process can be replaced without the guest noticing: its whole state as bytes (restored by the
/// successor from the last commit), and what it makes visible outside the channel once a commit is final (console
/// bytes published to the supervisor, doorbells).
public protocol RestartableDevice: AnyObject {
    func snapshot() -> [UInt8]
    func didCommit()
}

/// A malformed request, with the lane it came from.
public struct LaneError: Error, CustomStringConvertible {
    public let lane: Int
    public let error: MessageError
    public var description: String { "lane \(lane): \(error)" }
}
