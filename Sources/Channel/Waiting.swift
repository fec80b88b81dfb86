import CLinux
import Glibc
import System

/// How a side waits for its peer: spin on the ring for `spinMicroseconds`, then block on the doorbell.
public struct WaitPolicy: Sendable, Equatable {
    public var spinMicroseconds: Int
    public init(spinMicroseconds: Int) { self.spinMicroseconds = spinMicroseconds }
}

/// Spins until `ready()` or the budget runs out; true when ready.
@inline(__always)
func spin(microseconds: Int, until ready: () -> Bool) -> Bool {
    if ready() { return true }
    guard microseconds > 0 else { return false }
    let deadline = monotonicNanoseconds() + UInt64(microseconds) * 1000
    while true {
        for _ in 0..<32 {
            if ready() { return true }
            vmm_cpu_relax()
        }
        if monotonicNanoseconds() >= deadline { return ready() }
    }
}

/// Rings a doorbell (an eventfd owned elsewhere, passed by number).
@inline(__always)
func ring(_ doorbell: Int32) throws(ChannelError) {
    var one: UInt64 = 1
    while Glibc.write(doorbell, &one, 8) < 0 {
        if errno == EINTR { continue }
        if errno == EAGAIN { return }  // counter saturated: the peer will wake anyway
        throw .system(SystemError("write(doorbell)", errno: errno))
    }
}

/// Resets a doorbell's counter after a wake-up.
@inline(__always)
func drain(_ doorbell: Int32) {
    var value: UInt64 = 0
    _ = Glibc.read(doorbell, &value, 8)
}
