import System

/// What a device process does once, when its start-up is over: the first time it is about to block, at least
/// `delay` after it began serving. A block that would last past that moment is cut there, so that a process the
/// guest leaves idle gets to it too, and one the guest keeps too busy to block gets to it on a wait
/// (`pass()`). A class: the copies of a `DeviceServer` share it; only the thread that waits uses it.
public final class SettleAction: @unchecked Sendable {
    private let due: UInt64
    private var action: (() -> Void)?
    private var passes: UInt32 = 0

    public init(afterNanoseconds delay: UInt64, _ action: @escaping () -> Void) {
        due = monotonicNanoseconds() + delay
        self.action = action
    }

    /// Milliseconds until it is due (0: now); nil once it has run.
    func remainingMs(now: UInt64) -> Int32? {
        guard action != nil else { return nil }
        return now >= due ? 0 : Int32(clamping: (due - now + 999_999) / 1_000_000)
    }

    /// A wait that may not block (a request may come while it spins): runs the action if it is due, looking at the
    /// clock only every 256th time (a busy device waits once per batch of requests, every few microseconds).
    func pass() {
        passes &+= 1
        guard passes & 255 == 0, action != nil, monotonicNanoseconds() >= due else { return }
        run()
    }

    func run() {
        let body = action
        action = nil
        body?()
    }

    /// `Poll.wait`, with `settling` run on the way: before blocking if it is due, or when the block reaches its due
    /// moment with nothing ready. The caller's timeout keeps its meaning.
    public static func wait(_ fds: [Int32], timeoutMs: Int32, settling: SettleAction?) throws(SystemError) -> [Poll.Event] {
        guard let settling, let left = settling.remainingMs(now: monotonicNanoseconds()),
              timeoutMs < 0 || left < timeoutMs else { return try Poll.wait(fds, timeoutMs: timeoutMs) }
        if left > 0 {
            let ready = try Poll.wait(fds, timeoutMs: left)
            if ready.contains(where: { !$0.isEmpty }) { return ready }
        }
        settling.run()
        return try Poll.wait(fds, timeoutMs: timeoutMs < 0 ? -1 : timeoutMs - left)
    }
}
