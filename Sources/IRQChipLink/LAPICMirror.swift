import Devices
import Synchronization
import System

/// One vCPU's local APIC registers as the irqchip last published them, so that the vcpu process answers the
/// guest's register reads itself instead of asking the irqchip: TPR, PPR, ISR/IRR/TMR, the LVTs, SVR, ID, LDR/DFR,
/// the ICR and the timer, whose current count the reader computes from the published countdown at the time of the
/// read. The irqchip republishes after every batch of requests it handles, before it answers a synchronous one.
///
/// The copy also says how far into the vCPU's request ring the irqchip had handled when it made it: a vCPU whose own
/// earlier writes (a TPR write, an EOI, an acknowledgement) are further along must ask the irqchip, so it always
/// reads its own writes. A seqlock keeps a reader from taking half of one copy and half of the next.
///
/// Lives in the mailbox region (the vcpu and irqchip processes map it, no device does); every word is read as
/// hostile, though an irqchip could give the guest any register value through its answers anyway.
public struct LAPICMirror: @unchecked Sendable {
    let base: UnsafeMutableRawPointer

    /// Bytes per vCPU: the header line, then one word per register (offsets 0x000-0x3f0 in steps of 16).
    static let byteSize = 64 + 64 * 4
    static let registers = 64

    private var sequence: UnsafeMutablePointer<Atomic<UInt32>> { base.assumingMemoryBound(to: Atomic<UInt32>.self) }
    private func word64(_ byteOffset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + byteOffset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }
    private func word32(_ byteOffset: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        (base + byteOffset).assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    // Header: 0 sequence, 8 handled position, 16 countdown start, 24 ns per tick, 32 initial count, 36 countdown mode,
    // 40 when the timer is armed to expire (CLOCK_MONOTONIC ns, 0: not armed).
    private static let positionOffset = 8, startOffset = 16, tickOffset = 24, initialOffset = 32, modeOffset = 36
    private static let armedOffset = 40
    private static let currentCountOffset: UInt64 = 0x390

    // MARK: irqchip side

    /// Publishes `apic`'s registers, having handled the vCPU's requests up to ring index `handledPosition`.
    public func publish(_ apic: LocalAPIC, handledPosition: UInt64) {
        let s = sequence.pointee.load(ordering: .relaxed) &+ 1
        sequence.pointee.store(s | 1, ordering: .relaxed)  // odd: being written
        atomicMemoryFence(ordering: .releasing)
        word64(Self.positionOffset).pointee.store(handledPosition, ordering: .relaxed)
        let countdown = apic.countdown
        word64(Self.startOffset).pointee.store(countdown.start, ordering: .relaxed)
        word64(Self.tickOffset).pointee.store(countdown.nanosecondsPerTick, ordering: .relaxed)
        word32(Self.initialOffset).pointee.store(countdown.initial, ordering: .relaxed)
        word32(Self.modeOffset).pointee.store(countdown.mode, ordering: .relaxed)
        word64(Self.armedOffset).pointee.store(apic.timerArmedAt ?? 0, ordering: .relaxed)
        for i in 0..<Self.registers where UInt64(i * 16) != Self.currentCountOffset {
            // Reads of every other register have no side effect and do not depend on the time.
            word32(64 + 4 * i).pointee.store(apic.read(offset: UInt64(i * 16), now: 0), ordering: .relaxed)
        }
        sequence.pointee.store((s | 1) &+ 1, ordering: .releasing)  // even: whole
    }

    // MARK: vcpu side

    /// IRR and ISR, if (unless `sentPosition` is nil) the irqchip had handled everything up to `sentPosition` when
    /// it made the copy; nil: unknown (never published, older than that, or rewritten on every try).
    public func vectorSets(sentPosition: UInt64?) -> (requested: VectorSet, inService: VectorSet)? {
        // The irqchip republishes after every batch: a read that meets a rewrite tries again, for up to
        // `retryNanoseconds` (a publication reads all 64 registers of the model, some microseconds), rather than
        // answer "unknown" to a question asked right after a synchronous request.
        let deadline = monotonicNanoseconds() &+ Self.retryNanoseconds
        while true {
            let before = sequence.pointee.load(ordering: .acquiring)
            guard before != 0 else { return nil }
            if before & 1 != 0 {
                if monotonicNanoseconds() > deadline { return nil }
                continue
            }
            if let sentPosition, word64(Self.positionOffset).pointee.load(ordering: .relaxed) != sentPosition { return nil }
            var irr = VectorSet(), isr = VectorSet()
            for word in 0..<8 {
                let requested = register(LocalAPIC.Register.irr, word: word)
                let serving = register(LocalAPIC.Register.isr, word: word)
                for bit in 0..<32 {
                    let vector = UInt8(word * 32 + bit)
                    if requested & (1 << UInt32(bit)) != 0 { irr.insert(vector) }
                    if serving & (1 << UInt32(bit)) != 0 { isr.insert(vector) }
                }
            }
            atomicMemoryFence(ordering: .acquiring)
            if sequence.pointee.load(ordering: .relaxed) == before { return (irr, isr) }
            if monotonicNanoseconds() > deadline { return nil }
        }
    }

    static let retryNanoseconds: UInt64 = 500_000

    /// The timer's vector, if a copy that includes everything up to `sentPosition` shows that the CPU would take
    /// it at once were the timer to expire now: the APIC software-enabled, the timer's LVT unmasked with a legal
    /// vector whose priority class is above the processor priority's, and no request in IRR above it. nil: it
    /// would wait, or the copy cannot tell (then the irqchip decides, as for every other vector).
    public func timerVectorTakenAtOnce(sentPosition: UInt64) -> UInt8? {
        let copy = wholeCopy(sentPosition: sentPosition) { () -> (lvt: UInt32, svr: UInt32, ppr: UInt32, highestRequest: UInt8?) in
            let highestRequest = (0..<8).reversed().lazy.compactMap { word -> UInt8? in
                let requested = register(LocalAPIC.Register.irr, word: word)
                return requested == 0 ? nil : UInt8(word * 32 + 31 - requested.leadingZeroBitCount)
            }.first
            return (register(LocalAPIC.Register.lvtTimer), register(LocalAPIC.Register.svr), register(LocalAPIC.Register.ppr),
                    highestRequest)
        }
        guard let (lvt, svr, ppr, highestRequest) = copy else { return nil }
        let vector = UInt8(truncatingIfNeeded: lvt)
        guard svr & 0x100 != 0, lvt & (1 << 16) == 0, vector >= 16, UInt32(vector) & 0xf0 > ppr & 0xf0 else { return nil }
        if let highestRequest, highestRequest > vector { return nil }
        return vector
    }

    /// The timer as a copy that includes everything up to `sentPosition` shows it: the irqchip arms the timerfd
    /// before it publishes, so an armed time is the one the timerfd holds. nil: no such copy (yet).
    public func timer(sentPosition: UInt64) -> TimerCopy? {
        wholeCopy(sentPosition: sentPosition) {
            let at = word64(Self.armedOffset).pointee.load(ordering: .relaxed)
            return at == 0 ? .disarmed : .armed(at: at)
        }
    }

    /// Whether the timer is armed, and to expire when (CLOCK_MONOTONIC ns).
    public enum TimerCopy: Equatable, Sendable { case disarmed, armed(at: UInt64) }

    /// Whether the copy shows a requested vector (IRR) of a priority class above `priorityClass`, even if the copy
    /// is older than this vCPU's last writes (a vector in IRR stays there until this vCPU takes it); nil when there
    /// is no whole copy to read.
    public func requestsAbove(priorityClass: UInt8) -> Bool? {
        guard let (irr, _) = vectorSets(sentPosition: nil) else { return nil }
        guard let top = irr.highest else { return false }
        return top >> 4 > priorityClass
    }

    /// The register at `offset` of the page as a 32-bit read at `now()` would give it, if the copy is whole and the
    /// irqchip had handled everything up to `sentPosition` when it made it; nil: ask the irqchip. `now` is asked
    /// only for the timer's current count: a clock read through the vDSO cost ~350 ns after a 64-bit guest's exit.
    public func read(offset: UInt64, sentPosition: UInt64, now: () -> UInt64) -> UInt32? {
        guard offset < UInt64(Self.registers * 16), offset % 16 == 0 else { return nil }
        return wholeCopy(sentPosition: sentPosition) {
            guard offset == Self.currentCountOffset else { return register(offset) }
            return LocalAPIC.Countdown(mode: word32(Self.modeOffset).pointee.load(ordering: .relaxed),
                                       initial: word32(Self.initialOffset).pointee.load(ordering: .relaxed),
                                       start: word64(Self.startOffset).pointee.load(ordering: .relaxed),
                                       nanosecondsPerTick: word64(Self.tickOffset).pointee.load(ordering: .relaxed)).count(now: now())
        }
    }

    /// What `body` reads from one whole copy made once the irqchip had handled everything up to `sentPosition`;
    /// nil when there is none at once (never published, being rewritten, older, or rewritten during the read).
    private func wholeCopy<T>(sentPosition: UInt64, _ body: () -> T) -> T? {
        let before = sequence.pointee.load(ordering: .acquiring)
        guard before & 1 == 0, before != 0 else { return nil }
        guard word64(Self.positionOffset).pointee.load(ordering: .relaxed) == sentPosition else { return nil }
        let value = body()
        atomicMemoryFence(ordering: .acquiring)
        guard sequence.pointee.load(ordering: .relaxed) == before else { return nil }
        return value
    }

    /// The published register at `offset` (0x000-0x3f0), or for IRR, ISR and TMR its `word`th 32-bit word.
    private func register(_ offset: UInt64, word: Int = 0) -> UInt32 {
        word32(64 + 4 * (Int(offset / 16) + word)).pointee.load(ordering: .relaxed)
    }
}
