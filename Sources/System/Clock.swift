import CLinux
import Glibc

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC): the clock every process of a VM shares.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The time stamp counter as a clock for intervals on the vCPU's path, where every exit reads the time twice: one
/// RDTSC (about 10 ns here, no memory touched) instead of a CLOCK_MONOTONIC read through the vDSO (about 25 ns and a
/// load from its data page, which KVM_RUN's work has often evicted). Measured as the time between two KVM_RUNs of a
/// posted port write: 25-30 ns less. For statistics only: RDTSC is not ordered with the code around it (the vDSO's
/// read is), which moves a reading by tens of cycles, and on a host whose CPUs' counters are out of step a thread
/// that moves may see time go back, which `nanoseconds(from:to:)` counts as none. Its readings mean nothing to other
/// processes, so only differences leave the vCPU thread, in nanoseconds.
public struct CycleClock: Sendable {
    /// Nanoseconds per tick, 32.32 fixed point.
    private let nanosecondsPerTick: UInt64

    /// The counter now (inlinable: the vCPU reads it twice an exit).
    @inlinable @inline(__always)
    public static func now() -> UInt64 { vmm_rdtsc() }

    /// A clock for a counter of `kHz` thousand ticks a second (KVM_GET_TSC_KHZ: the vCPU's counter runs at the
    /// host's rate unless a VMM sets another, which vmm never does); measured against CLOCK_MONOTONIC when
    /// `kHz` is unknown (0).
    public init(kHz: Int) {
        let rate = kHz > 0 ? UInt64(kHz) : Self.measureKHz()
        nanosecondsPerTick = max(1, (1_000_000 << 32) / max(1, rate))
    }

    /// The nanoseconds from reading `start` to reading `end`; 0 if the counter went back.
    @inline(__always)
    public func nanoseconds(from start: UInt64, to end: UInt64) -> UInt64 {
        let ticks = end &- start
        return Int64(bitPattern: ticks) > 0 ? nanoseconds(ticks) : 0
    }

    /// `ticks` of the counter in nanoseconds.
    @inline(__always)
    public func nanoseconds(_ ticks: UInt64) -> UInt64 {
        let (high, low) = ticks.multipliedFullWidth(by: nanosecondsPerTick)
        return high << 32 | low >> 32
    }

    /// Nanoseconds as ticks of the counter (rounded down; at most UInt64.max).
    public func ticks(nanoseconds: UInt64) -> UInt64 {
        let wide = nanoseconds.multipliedFullWidth(by: 1 << 32)
        guard wide.high < nanosecondsPerTick else { return .max }
        return nanosecondsPerTick.dividingFullWidth(wide).quotient
    }

    /// The counter's rate over 2 ms of CLOCK_MONOTONIC.
    static func measureKHz() -> UInt64 {
        let (n0, t0) = (monotonicNanoseconds(), now())
        var n1 = n0
        while n1 &- n0 < 2_000_000 { n1 = monotonicNanoseconds() }
        return (now() &- t0) &* 1_000_000 / max(1, n1 &- n0)
    }
}
