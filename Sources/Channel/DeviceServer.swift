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
    /// changed). Until then a request counts as not yet applied for whoever watches the channel.
    public mutating func commit() {
        for r in requests { r.publishTaken() }
        uncommitted = 0
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
    public mutating func wait(extra: [Int32], timeoutMs: Int32 = -1) throws(ChannelError) -> [Poll.Event] {
        commit()
        return try Self.wait([self], extra: extra, timeoutMs: timeoutMs)
    }

    /// The same over several channels at once (the irqchip serves the vCPUs' channel and the devices' lines).
    /// Each server must be committed first.
    public static func wait(_ servers: [DeviceServer], extra: [Int32], timeoutMs: Int32 = -1) throws(ChannelError) -> [Poll.Event] {
        precondition(servers.allSatisfy { $0.uncommitted == 0 }, "commit before waiting")
        let rings = servers.flatMap { s in s.requests.indices.filter { !s.brokenLanes.contains($0) }.map { s.requests[$0] } }
        let none = [Poll.Event](repeating: [], count: extra.count)
        let budget = servers.map(\.policy.spinMicroseconds).max() ?? 0
        if spin(microseconds: budget, until: { rings.contains { $0.hasMessages() } }) { return none }
        for r in rings { r.setSleeping(true) }
        defer { for r in rings { r.setSleeping(false) } }
        if rings.contains(where: { $0.hasMessages() }) { return none }
        let doorbells = servers.map(\.deviceDoorbell)
        let ready: [Poll.Event]
        do { ready = try Poll.wait(doorbells + extra, timeoutMs: timeoutMs) } catch { throw .system(error) }
        for (i, d) in doorbells.enumerated() where ready[i].contains(.readable) { drain(d) }
        return Array(ready.dropFirst(doorbells.count))
    }
}

/// A malformed request, with the lane it came from.
public struct LaneError: Error, CustomStringConvertible {
    public let lane: Int
    public let error: MessageError
    public var description: String { "lane \(lane): \(error)" }
}
