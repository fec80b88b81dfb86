import CLinux
import Glibc
import Synchronization
import System

/// How a side waits for its peer: spin on the ring for up to `maxSpinMicroseconds` (the window itself is learnt,
/// see `SpinWindow`), and only while the VM's `census` says a CPU is free for it; then block on the doorbell.
public struct WaitPolicy: Sendable {
    /// The upper bound of every spin window (`vmm.spin_budget_us`); 0: never spin.
    public var maxSpinMicroseconds: Int
    /// Shared by every process of the VM, and this waiter's place in it; nil: spin whenever the window says so
    /// (tests, single processes).
    public var census: SpinCensus.Seat?

    public init(maxSpinMicroseconds: Int, census: SpinCensus.Seat? = nil) {
        self.maxSpinMicroseconds = maxSpinMicroseconds
        self.census = census
    }

    /// A new waiter's window under this policy.
    func window() -> SpinWindow { SpinWindow(maxNanoseconds: UInt64(max(0, maxSpinMicroseconds)) * 1000) }
}

/// How long one waiter spins before it blocks, learnt from what its waits took, as KVM's halt-polling learns its
/// window: a wait that blocked but ended within the upper bound says a longer spin would have caught it (grow:
/// double, from 10 us); a wait longer than the bound says spinning is wasted on this peer (shrink: halve, to 0
/// below 10 us). A wait the spin caught changes nothing. So a device whose guest exits every 40 us learns to
/// spin 40-80 us, and one whose guest idles in HLT stops spinning after a few waits.
public struct SpinWindow: Sendable {
    public let maxNanoseconds: UInt64
    public private(set) var nanoseconds: UInt64
    static let growStart: UInt64 = 10_000

    public init(maxNanoseconds: UInt64) {
        self.maxNanoseconds = maxNanoseconds
        nanoseconds = min(maxNanoseconds, Self.growStart)
    }

    /// A gap this long between two of a spinner's clock readings (normally a few microseconds apart) means it was
    /// preempted (a scheduler's time slice is milliseconds; this host's own hiccups stay well below it).
    static let preemptionGapNanoseconds: UInt64 = 500_000

    /// The spinner was preempted: no CPU was free for it after all. Halved like a wait past the bound, so a busy
    /// host takes a waiter's spinning away within a few preemptions, and one hiccup does not.
    public mutating func preempted() {
        nanoseconds /= 2
        if nanoseconds < Self.growStart { nanoseconds = 0 }
    }

    /// After a wait of `waited` ns that the spin caught (`caught`) or that had to block.
    public mutating func learn(waited: UInt64, caught: Bool) {
        if caught || waited <= nanoseconds { return }
        if waited > maxNanoseconds {
            nanoseconds /= 2
            if nanoseconds < Self.growStart { nanoseconds = 0 }
        } else {
            nanoseconds = min(maxNanoseconds, max(nanoseconds * 2, Self.growStart))
        }
    }
}

/// Which CPUs the VM's processes may spin on, in a page every one of them maps: how many CPUs there are, and one
/// seat per vCPU thread and per device process that says which CPU its owner holds now (a vCPU in the guest, a
/// waiter spinning). A waiter spins only while the seats taken leave a CPU for it and none of them is the CPU it
/// runs on, so that on a small host spinning device processes do not take the CPU a vCPU needs: a device process
/// the scheduler woke onto a vCPU's CPU (wake-ups tend to land on the waker's CPU) would otherwise spin there
/// while the vCPU it waits for cannot run, for the whole window, on every exit, until the scheduler moved it. A
/// device process in that place moves itself to a free CPU instead of blocking (`Seat.stepAside`).
/// Seats, not a shared counter: a process killed while it spins leaves its seat to its successor, who clears it,
/// instead of a count that never comes down.
///
/// Every process of the VM writes here, a hostile device process included: the worst it can do is make the others
/// spin too much or not at all, a cost it could cause anyway by spinning itself.
public final class SpinCensus: @unchecked Sendable {
    private let mapping: MappedRegion
    /// Seats live from the second cache line on, one line each (a vCPU writes its seat on every entry and exit:
    /// sharing a line would make every other seat's owner pay for it); the first line holds the CPU and seat counts.
    public static let maxSeats = 256
    static let byteSize = 64 + maxSeats * 64
    /// A held seat whose owner's CPU is not known: counts as busy, matches no CPU.
    @inlinable static var unknownCPU: Int64 { .max }

    /// The supervisor's side: a new census for `cpus` CPUs and `seats` seats.
    public static func create(cpus: Int, seats: Int) throws(SystemError) -> FileDescriptor {
        let fd = try MemFD.create(name: "spin-census", size: byteSize)
        let census = try SpinCensus(attaching: fd.raw)
        census.word(0).pointee.store(Int64(max(1, cpus)), ordering: .relaxed)
        census.word(1).pointee.store(Int64(min(max(0, seats), maxSeats)), ordering: .relaxed)
        return fd
    }

    public init(attaching fd: Int32) throws(SystemError) {
        mapping = try MappedRegion(fd: fd, size: Self.byteSize)
    }

    private func word(_ i: Int) -> UnsafeMutablePointer<Atomic<Int64>> {
        (mapping.base + i * 8).assumingMemoryBound(to: Atomic<Int64>.self)
    }

    fileprivate func seatWord(_ i: Int) -> UnsafeMutablePointer<Atomic<Int64>> {
        (mapping.base + 64 + i * 64).assumingMemoryBound(to: Atomic<Int64>.self)
    }

    /// The CPUs the VM's processes may use, as the supervisor counted them.
    fileprivate var cpus: Int64 { word(0).pointee.load(ordering: .relaxed) }
    /// The seats in use (clamped: any process can write the count).
    fileprivate var seats: Int { Int(min(max(0, word(1).pointee.load(ordering: .relaxed)), Int64(Self.maxSeats))) }

    /// The CPUs this process may run on (its affinity mask), for `create`.
    public static func availableCPUs() -> Int { Int(vmm_available_cpus()) }

    /// Seat `index` (vCPU i sits in seat i, the device processes after the vCPUs); cleared on taking it, since a
    /// predecessor may have died holding it. `stepsAside`: a waiter that finds itself on a CPU another seat holds
    /// moves to a free one instead of blocking (device processes; a vCPU thread stays where it is).
    public func seat(_ index: Int, stepsAside: Bool = false) -> Seat {
        let s = Seat(census: self, index: max(0, min(index, Self.maxSeats - 1)), stepsAside: stepsAside)
        s.release()
        return s
    }

    /// One waiter's place in the census.
    public struct Seat: @unchecked Sendable {
        let census: SpinCensus
        let index: Int
        let stepsAside: Bool
        @usableFromInline let word: UnsafeMutablePointer<Atomic<Int64>>

        init(census: SpinCensus, index: Int, stepsAside: Bool) {
            self.census = census
            self.index = index
            self.stepsAside = stepsAside
            word = census.seatWord(index)
        }

        /// The owner holds the CPU it runs on without asking (a vCPU thread entering the guest). Written only when
        /// it changes, as `release` is: the device processes read the seats at every spin, and a store to the line
        /// they read takes it back from their CPU's cache, a cross-CPU miss at every entry (~50 ns here, several
        /// times that after a 64-bit guest's exit).
        ///
        /// A seat still held keeps the CPU it names unless `recheck`: asking which CPU this is cost ~100-250 ns an
        /// entry after a 64-bit guest's exit here (glibc's code and the thread's rseq area, both cold by then), and
        /// a thread moves seldom; the vCPU rechecks once a millisecond, and a seat released for a wait asks anew.
        /// Inlinable, as `release`: the vCPU calls them on its every exit.
        @inlinable @inline(__always) public func hold(recheck: Bool = true) {
            let current = word.pointee.load(ordering: .relaxed)
            guard current == 0 || recheck else { return }
            let held = Self.word(holding: vmm_current_cpu())
            if current != held { word.pointee.store(held, ordering: .relaxed) }
        }
        @inlinable @inline(__always) public func release() {
            if word.pointee.load(ordering: .relaxed) != 0 { word.pointee.store(0, ordering: .relaxed) }
        }

        /// A seat's word: 0 free, else the CPU held plus one (`unknownCPU` when the owner could not tell).
        @inlinable @inline(__always)
        static func word(holding cpu: Int32) -> Int64 { cpu >= 0 ? Int64(cpu) + 1 : SpinCensus.unknownCPU }
        @inline(__always) func hold(cpu: Int32) { word.pointee.store(Self.word(holding: cpu), ordering: .relaxed) }

        /// Takes a CPU to spin on when one is free and no other seat holds the one this thread runs on (the
        /// caller then `release()`s it); false: block instead. A seat that `stepsAside` and finds its CPU held
        /// while another is free moves there first (see `stepAside`).
        public func trySpin() -> Bool {
            let cpus = census.cpus
            var mine = Self.word(holding: vmm_current_cpu())
            word.pointee.store(mine, ordering: .relaxed)
            var (busy, shared) = othersHolding(mine)
            if busy <= cpus && shared && stepsAside, let moved = stepAside() {
                mine = moved
                word.pointee.store(mine, ordering: .relaxed)
                (busy, shared) = othersHolding(mine)
            }
            if busy <= cpus && !shared { return true }
            release()
            return false
        }

        /// Calls `body` with the word of every other seat that is held.
        @inline(__always) private func forEachOtherHeld(_ body: (Int64) -> Void) {
            for i in 0..<census.seats where i != index {
                let held = census.seatWord(i).pointee.load(ordering: .relaxed)
                if held != 0 { body(held) }
            }
        }

        /// How many seats are held counting this one, and whether another holds `mine`.
        private func othersHolding(_ mine: Int64) -> (busy: Int64, shared: Bool) {
            var busy: Int64 = 1
            var shared = false
            forEachOtherHeld { held in
                busy += 1
                if held == mine && mine != SpinCensus.unknownCPU { shared = true }
            }
            return (busy, shared)
        }

        /// Moves this thread off the CPUs other seats hold: the scheduler wakes a blocked device process on the
        /// CPU it last ran on, and once a doorbell woke it onto a vCPU's CPU it would otherwise block there again
        /// and be woken there again, exit after exit, each time taking the CPU from the vCPU (a 64-bit port-write
        /// loop here spent phases of seconds at ~1,000 such wake-ups a second). The seat's new word; nil when
        /// every CPU it may use is held.
        private func stepAside() -> Int64? {
            var held: [Int32] = []
            forEachOtherHeld { word in
                if word > 0 && word != SpinCensus.unknownCPU { held.append(Int32(truncatingIfNeeded: word - 1)) }
            }
            let cpu = vmm_step_off_cpus(held, Int32(held.count))
            return cpu >= 0 ? Self.word(holding: cpu) : nil
        }
    }
}

/// Spins until `ready()` or the window's time runs out, if the census lets it; true when ready. Every 10 us it
/// also asks `extra()` (a zero-timeout poll of other descriptors), so that a long window does not delay a timer or
/// a console byte. A spin that finds it was preempted (a gap in its own clock readings: the host has more runnable
/// threads than CPUs, this VM's or others') stops, and the window is halved (`SpinWindow.preempted`): spinning then
/// only takes the CPU from whoever the waiter waits for.
@inline(__always)
public func spin(window: inout SpinWindow, census: SpinCensus.Seat?, until ready: () -> Bool, extra: (() -> Bool)? = nil) -> Bool {
    if ready() { return true }
    guard window.nanoseconds > 0 else { return false }
    if let census, !census.trySpin() { return false }
    defer { census?.release() }
    let start = monotonicNanoseconds()
    let deadline = start + window.nanoseconds
    var nextExtra = start + 10_000
    var last = start
    while true {
        for _ in 0..<32 {
            if ready() { return true }
            vmm_cpu_relax()
        }
        let now = monotonicNanoseconds()
        if now &- last > SpinWindow.preemptionGapNanoseconds {
            window.preempted()
            return ready()
        }
        last = now
        if now >= deadline { return ready() }
        if let extra, now >= nextExtra {
            if extra() { return false }
            nextExtra = now + 10_000
        }
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
