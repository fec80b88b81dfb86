import Channel
import Synchronization
import System

/// What the vCPU threads of one VM share: the first reason to stop (it wins; the process then reports it and
/// exits, taking the other threads with it), and how many vCPUs are parked: halted with interrupts off, or
/// waiting for a start-up IPI. When every vCPU is parked nothing in the guest can wake any of them.
final class VCPUGroup: @unchecked Sendable {
    let count: Int
    private let state = Mutex<(stop: ControlMessage.VCPUStop?, parked: Int)>((nil, 0))
    private let stopped: EventFD

    init(count: Int) throws(SystemError) {
        self.count = count
        stopped = try EventFD()
    }

    func stop(_ why: ControlMessage.VCPUStop) {
        let first = state.withLock { s -> Bool in
            guard s.stop == nil else { return false }
            s.stop = why
            return true
        }
        if first { try? stopped.signal() }
    }

    /// A vCPU parks; true when that makes every vCPU parked.
    func park() -> Bool { state.withLock { s in s.parked += 1; return s.parked == count } }

    func unpark() { state.withLock { $0.parked -= 1 } }

    /// Blocks the calling (main) thread until a vCPU stops the VM; runs `settling` when it is due meanwhile.
    func waitForStop(settling: SettleAction? = nil) -> ControlMessage.VCPUStop {
        while true {
            if let why = state.withLock({ $0.stop }) { return why }
            _ = try? SettleAction.wait([stopped.raw], timeoutMs: -1, settling: settling)
        }
    }
}
