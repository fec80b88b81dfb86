import Glibc
import System

/// The vcpu side of one lane of a device channel: posts writes, makes synchronous reads.
///
/// Writes return as soon as they are on the ring; reads wait (spin, then block) for the answer with the
/// same sequence number. A late answer to a read that already timed out is recognised by its sequence
/// and dropped, so it can never be taken for the answer to a later read.
public struct DeviceClient: @unchecked Sendable {
    private var requests: RingProducer
    private var responses: RingConsumer
    private let deviceDoorbell: Int32
    private let responseDoorbell: Int32
    public let policy: WaitPolicy
    public let timeoutMs: Int
    /// After a device missed a deadline, how long a call waits for it: a hung device costs every later access this,
    /// not the full timeout; a device that answers again is healthy again.
    public let failedProbeMs: Int
    /// The device missed its last deadline.
    public private(set) var failed = false
    private var nextSequence: UInt64
    public let region: ChannelRegion
    private let lane: Int
    private let readMirror: ReadMirror?
    /// How long this lane spins for an answer, learnt from how long answers take (a device that spins itself
    /// answers in microseconds; one asleep needs a wake-up).
    private var window: SpinWindow
    /// A post has not yet asked whether the device sleeps (see `wakeIfAsleep`).
    public private(set) var wakeCheckDue = false

    public init(region: ChannelRegion, lane: Int, deviceDoorbell: Int32, responseDoorbell: Int32,
                policy: WaitPolicy, timeoutMs: Int, failedProbeMs: Int = 2) {
        self.failedProbeMs = min(failedProbeMs, timeoutMs)
        self.region = region
        self.lane = lane
        readMirror = region.readMirror
        requests = RingProducer(region.requestRing(lane))
        responses = RingConsumer(region.responseRing(lane))
        self.deviceDoorbell = deviceDoorbell
        self.responseDoorbell = responseDoorbell
        self.policy = policy
        window = policy.window()
        self.timeoutMs = timeoutMs
        nextSequence = region.requestRing(lane).tail.pointee.load(ordering: .relaxed) &+ 1
    }

    /// The ring index after this lane's last request: the device has handled everything this lane sent once its
    /// `DeviceServer.positions[lane]` is here.
    public var sentPosition: UInt64 { requests.position }

    /// What a port read would give, answered from the device's published reads (see ReadMirror) when the device is
    /// serving and had handled everything every lane sent when it published them; nil: make the call.
    /// `mutating` though it changes nothing: a caller that keeps its clients in place (the vCPU's lanes, on every
    /// port read) then hands this one over in place, where a non-mutating call copied all of it (177 bytes, a retain
    /// of each reference it holds, and their releases).
    public mutating func mirroredPortRead(_ port: UInt16, size: Int) -> UInt64? {
        guard let readMirror, region.deviceStatus == .serving else { return nil }
        let (own, mine, region) = (lane, requests.position, region)
        return readMirror.read(port: port, size: size) {
            $0 == own ? mine : region.requestRing($0).tail.pointee.load(ordering: .acquiring)
        }
    }

    /// Queues an access without waiting for the device (port and MMIO writes), waking the device if it sleeps.
    public mutating func post(_ operation: MessageKind, size: UInt8, address: UInt64, data: UInt64) throws(ChannelError) {
        guard region.deviceStatus != .broken else { return }  // a device given up on ignores writes, as no device would
        _ = try send(operation, size: size, address: address, data: data)
    }

    /// The same, but whether the device must be woken is left to `wakeIfAsleep()`, which the caller owes before it
    /// enters the guest or waits for anything: its barrier costs least once the message's cache lines are on their
    /// way (see RingProducer.push). The vCPU's posted writes, one per exit.
    public mutating func postDeferringWake(_ operation: MessageKind, size: UInt8, address: UInt64, data: UInt64) throws(ChannelError) {
        guard region.deviceStatus != .broken else { return }
        _ = try send(operation, size: size, address: address, data: data, fenced: false)
        wakeCheckDue = true
    }

    /// Rings the device's doorbell if it went to sleep before it saw what `post` queued; nothing when nothing is
    /// owed.
    public mutating func wakeIfAsleep() throws(ChannelError) {
        guard wakeCheckDue else { return }
        wakeCheckDue = false
        if requests.consumerSleepingAfterFence() { try ring(deviceDoorbell) }
    }

    /// How many device timeouts in a row a call waits while the supervisor replaces the device's process (a restart
    /// takes milliseconds; a device that crash-loops is marked broken long before this runs out).
    public static let restartWaitLimit = 10

    /// Sends an access and waits for its answer (reads, sync); returns the answer's data.
    public mutating func call(_ operation: MessageKind, size: UInt8, address: UInt64, data: UInt64 = 0) throws(ChannelError) -> UInt64 {
        if region.deviceStatus == .broken { throw .broken }
        let sequence = try send(operation, size: size, address: address, data: data)
        let sent = monotonicNanoseconds()
        let restartsAtSend = region.restarts
        var blocked = false
        var deadline = monotonicNanoseconds() + UInt64(failed ? failedProbeMs : timeoutMs) * 1_000_000
        var extensions = 0
        /// Another timeout for a device whose process is being (or was) replaced, up to `restartWaitLimit` a call.
        func waitLonger(from now: UInt64) -> Bool {
            guard extensions < Self.restartWaitLimit else { return false }
            extensions += 1
            deadline = now + UInt64(timeoutMs) * 1_000_000
            return true
        }
        /// The device's process is being replaced, or was since the request went out: its successor handles the
        /// request after whatever its predecessor left uncommitted on the ring (console output it must write first,
        /// answers it gives again), and may still be at it when the deadline comes. A device never replaced during
        /// the call is waited for one timeout, no more.
        func replaced() -> Bool { extensions > 0 || region.deviceStatus == .restarting || region.restarts != restartsAtSend }
        while true {
            // Every path passes the deadline check: a device that keeps sending stale answers cannot hold the vCPU.
            let now = monotonicNanoseconds()
            if now >= deadline && !responses.hasMessages() && replaced() {
                // The successor answers this request (it is still on the ring).
                _ = waitLonger(from: now)
            }
            if now >= deadline && !responses.hasMessages() {
                failed = true
                throw .timedOut("\(operation) at 0x\(String(address, radix: 16))")
            }
            let ready = spin(window: &window, census: policy.census) { responses.hasMessages() }
            if ready {
                let answer: Message?
                do { answer = try responses.pop() } catch { throw .peer(error) }
                guard let answer else { continue }
                guard answer.operation == .response else { throw .peer(.unknownOperation(answer.operation.rawValue)) }
                if answer.sequence == sequence {
                    failed = false
                    window.learn(waited: monotonicNanoseconds() - sent, caught: !blocked)
                    return answer.data
                }
                if answer.sequence < sequence {  // answer to a read that already timed out, or one handled again
                    let now = monotonicNanoseconds()
                    if now >= deadline && replaced() && waitLonger(from: now) {
                        continue  // the successor's answers to its predecessor's requests come first
                    }
                    if now >= deadline {
                        failed = true
                        throw .timedOut("\(operation) at 0x\(String(address, radix: 16)) (only stale answers came)")
                    }
                    continue
                }
                throw .peer(.unexpectedSequence(expected: sequence, got: answer.sequence))
            }
            if now >= deadline { continue }  // answers arrived just now: take them, then give up
            if region.deviceStatus == .broken { throw .broken }  // the supervisor rings us when it gives up
            responses.setSleeping(true)
            blocked = true
            policy.census?.release()  // a vCPU's seat, held through its exit, is not held while it sleeps
            if !responses.hasMessages() {
                let left = Int32(min(UInt64(Int32.max), (deadline - now) / 1_000_000 + 1))
                do { _ = try Poll.wait([responseDoorbell], timeoutMs: left) } catch { throw .system(error) }
                drain(responseDoorbell)
            }
            responses.setSleeping(false)
        }
    }

    private mutating func send(_ operation: MessageKind, size: UInt8, address: UInt64, data: UInt64,
                               fenced: Bool = true) throws(ChannelError) -> UInt64 {
        let message = Message(sequence: nextSequence, operation: operation, size: size, address: address, data: data)
        var waitedNs: UInt64 = 0
        var extensions = 0
        while true {
            let pushed: Bool
            do { pushed = try requests.push(message, fenced: fenced) } catch { throw .peer(error) }
            if pushed { break }
            // Full ring: the device is behind. Wake it and back off; give up after the timeout (after the short
            // probe for a device that missed a deadline already), unless its process is being replaced.
            try ring(deviceDoorbell)
            if region.deviceStatus == .broken { throw .broken }
            if waitedNs >= UInt64(timeoutMs) * 1_000_000 && region.deviceStatus == .restarting && extensions < Self.restartWaitLimit {
                extensions += 1
                waitedNs = 0
            }
            if waitedNs >= UInt64(failed ? failedProbeMs : timeoutMs) * 1_000_000 {
                failed = true
                throw .timedOut("ring full")
            }
            usleep(50)
            waitedNs += 50_000
        }
        nextSequence &+= 1
        if fenced {
            // Covers this lane's earlier unfenced posts too: a device awake sees them all, one asleep is woken.
            wakeCheckDue = false
            if requests.consumerSleeping() { try ring(deviceDoorbell) }
        }
        return message.sequence
    }
}
