/// A 256-bit vector set (IRR, ISR, TMR).
public struct VectorSet: Equatable, Sendable {
    /// Vector 64*i + b is bit b of word i.
    private(set) var words = [UInt64](repeating: 0, count: 4)
    public init() {}
    /// A set from its four words (a snapshot's); nil for any other count.
    init?(words: [UInt64]) {
        guard words.count == 4 else { return nil }
        self.words = words
    }
    public func contains(_ v: UInt8) -> Bool { words[Int(v >> 6)] & (1 << UInt64(v & 63)) != 0 }
    public mutating func insert(_ v: UInt8) { words[Int(v >> 6)] |= 1 << UInt64(v & 63) }
    public mutating func remove(_ v: UInt8) { words[Int(v >> 6)] &= ~(1 << UInt64(v & 63)) }
    public var highest: UInt8? {
        for w in stride(from: 3, through: 0, by: -1) where words[w] != 0 {
            return UInt8(w * 64 + 63 - words[w].leadingZeroBitCount)
        }
        return nil
    }
    /// The 32-bit register that holds vectors 32*i ... 32*i+31.
    public func register(_ i: Int) -> UInt32 { UInt32(truncatingIfNeeded: words[i / 2] >> (i % 2 == 0 ? 0 : 32)) }
}

/// What a local APIC asks of the rest of the interrupt system after a register write or a timer event.
public enum APICEffect: Equatable, Sendable {
    /// An IPI from the ICR. `shorthand`: 0 none (use the destination), 1 self, 2 all including self, 3 all excluding self.
    case interprocessorInterrupt(InterruptMessage, shorthand: UInt8)
    /// EOI of a level-triggered vector: the IOAPIC clears remote IRR.
    case endOfInterrupt(vector: UInt8)
    /// Arm the timer to fire at this time (ns, the model's clock), replacing any armed time.
    case armTimer(atNanoseconds: UInt64)
    case cancelTimer
}

/// What an IPI or IOAPIC message makes a CPU do beside taking a fixed vector: the vcpu process acts on these.
public enum CPUEvent: Equatable, Sendable {
    case nmi
    /// INIT: the CPU resets and waits for a start-up IPI.
    case initialize
    /// Start-up IPI: a CPU waiting for one starts in real mode at `vector` << 12.
    case startup(vector: UInt8)
}

/// One local APIC in xAPIC (MMIO) mode, as Linux drives it: ID, version, TPR/PPR, EOI, LDR/DFR, SVR,
/// ISR/TMR/IRR, ESR, ICR (fixed, lowest priority, NMI, INIT, SIPI, shorthands), the LVT (timer, LINT0, LINT1,
/// error, thermal, performance), and the timer with one-shot, periodic and TSC-deadline modes. Pure model:
/// time comes in as nanoseconds on a monotonic clock; effects go out as values.
public final class LocalAPIC {
    public static let defaultBase: UInt64 = 0xfee0_0000
    /// Register offsets other processes need to know about.
    public enum Register {
        public static let tpr: UInt64 = 0x80, ppr: UInt64 = 0xa0, eoi: UInt64 = 0xb0, svr: UInt64 = 0xf0, isr: UInt64 = 0x100, irr: UInt64 = 0x200
        public static let icrLow: UInt64 = 0x300, lvtTimer: UInt64 = 0x320, initialCount: UInt64 = 0x380
    }
    /// The timer's input clock before the divider: 1 GHz, as QEMU's APIC, so one tick is one nanosecond.
    public static let timerNanosecondsPerTick: UInt64 = 1

    public let apicID: UInt8
    private var tpr: UInt32 = 0
    private var ldr: UInt32 = 0
    private var dfr: UInt32 = 0xffff_ffff
    private var svr: UInt32 = 0xff
    private var esr: UInt32 = 0
    private var pendingESR: UInt32 = 0
    private var icrLow: UInt32 = 0
    private var icrHigh: UInt32 = 0
    public private(set) var irr = VectorSet()
    public private(set) var isr = VectorSet()
    public private(set) var tmr = VectorSet()
    private var lvt: [UInt32] = Array(repeating: 1 << 16, count: 7)  // CMCI, timer, thermal, perf, LINT0, LINT1, error: masked
    private var divideConfig: UInt32 = 0
    private var initialCount: UInt32 = 0
    private var timerStart: UInt64 = 0
    private var timerRunning = false
    /// TSC-deadline mode: the deadline in the model's nanoseconds (0: disarmed).
    public private(set) var deadline: UInt64 = 0
    /// The absolute time the process's timer is armed for, as the last `armTimer` effect said (nil: disarmed).
    /// The timer state alone does not say it for a periodic timer (the expiry last handled is not kept), and a
    /// restarted process must re-arm its fresh timer at exactly this time: one due while the predecessor was dying
    /// then fires at once instead of being skipped.
    public private(set) var timerArmedAt: UInt64?
    /// IA32_APIC_BASE's global enable (bit 11). Cleared, the CPU has no local APIC (SDM vol. 3, 10.4.3): nothing is
    /// accepted, no IPI reaches it, its registers are back at their power-up values, and it stays so until the bit
    /// is set again (the vcpu process, which sees the MSR, says so).
    public private(set) var hardwareEnabled = true
    /// The vector offered to the CPU and not yet acknowledged. On real hardware acknowledge and delivery are one
    /// step; here the CPU is another process, so an interrupt for the same vector that arrives in between must
    /// not merge with the one being taken: it is re-raised at acknowledge.
    public var offered: UInt8? { didSet { arrivedWhileOffered = nil } }
    private var arrivedWhileOffered: Bool?  // level-triggered?

    /// Moves the offer to a higher vector; returns the old offer's re-raise flag, which `revertOffer` puts back if
    /// the vCPU took the old vector before the swap reached its mailbox.
    func swapOffer(to vector: UInt8) -> Bool? {
        defer { offered = vector }
        return arrivedWhileOffered
    }

    func revertOffer(to vector: UInt8, arrivedWhileOffered flag: Bool?) {
        offered = vector
        arrivedWhileOffered = flag
    }

    enum LVT { static let cmci = 0, timer = 1, thermal = 2, performance = 3, lint0 = 4, lint1 = 5, error = 6 }

    public init(apicID: UInt8) { self.apicID = apicID }

    /// INIT: every register back to its power-on value but the APIC ID (the CPU itself goes to wait-for-SIPI).
    public func reset() {
        tpr = 0; ldr = 0; dfr = 0xffff_ffff; svr = 0xff; esr = 0; pendingESR = 0; icrLow = 0; icrHigh = 0
        irr = VectorSet(); isr = VectorSet(); tmr = VectorSet()
        lvt = Array(repeating: 1 << 16, count: 7)
        divideConfig = 0; initialCount = 0; timerRunning = false; deadline = 0
        timerArmedAt = nil  // the controller cancels the process's timer along with the reset
        offered = nil
    }

    public var softwareEnabled: Bool { svr & 0x100 != 0 }

    /// IA32_APIC_BASE's global enable bit changed: disabling resets every register to its power-up value (as INIT
    /// does; the APIC ID stays), so re-enabling finds the APIC software-disabled with every LVT masked; its timer
    /// is cancelled. The caller withdraws what was offered.
    public func setHardwareEnabled(_ enabled: Bool) -> [APICEffect] {
        guard enabled != hardwareEnabled else { return [] }
        hardwareEnabled = enabled
        guard !enabled else { return [] }
        reset()
        return [.cancelTimer]
    }
    var timerLVT: UInt32 { lvt[LVT.timer] }
    public var timerMode: UInt32 { (timerLVT >> 17) & 3 }  // 0 one-shot, 1 periodic, 2 TSC-deadline
    var divisor: UInt64 {
        let v = (divideConfig & 3) | ((divideConfig >> 1) & 4)
        return v == 7 ? 1 : UInt64(2) << UInt64(v)
    }
    /// A periodic timer is never faster than this (KVM's `min_timer_period_us` default): with divide 1 and count 1 the
    /// period would be 1 ns, and the irqchip would do nothing but re-arm it.
    public static let minimumPeriodicNanoseconds: UInt64 = 200_000
    var period: UInt64 {
        let ticks = UInt64(initialCount) * divisor * Self.timerNanosecondsPerTick
        return timerMode == 1 && ticks > 0 ? max(ticks, Self.minimumPeriodicNanoseconds) : ticks
    }

    public var processorPriority: UInt32 {
        let isrv = UInt32(isr.highest ?? 0)
        return (tpr & 0xf0) >= (isrv & 0xf0) ? tpr & 0xff : isrv & 0xf0
    }

    // MARK: registers

    public func read(offset: UInt64, now: UInt64) -> UInt32 {
        switch offset {
        case 0x20: return UInt32(apicID) << 24
        case 0x30: return 0x0005_0014  // version 0x14 (integrated APIC), max LVT entry 5 (as QEMU's)
        case 0x80: return tpr
        case 0x90: return 0  // arbitration priority: not implemented on P4/Xeon-era APICs either
        case 0xa0: return processorPriority
        case 0xd0: return ldr
        case 0xe0: return dfr
        case 0xf0: return svr
        case 0x100...0x170 where offset % 16 == 0: return isr.register(Int(offset - 0x100) / 16)
        case 0x180...0x1f0 where offset % 16 == 0: return tmr.register(Int(offset - 0x180) / 16)
        case 0x200...0x270 where offset % 16 == 0: return irr.register(Int(offset - 0x200) / 16)
        case 0x280: return esr
        case 0x2f0: return lvt[LVT.cmci]
        case 0x300: return icrLow & ~(1 << 12)  // delivery status: always idle, IPIs are sent at once
        case 0x310: return icrHigh
        case 0x320: return lvt[LVT.timer]
        case 0x330: return lvt[LVT.thermal]
        case 0x340: return lvt[LVT.performance]
        case 0x350: return lvt[LVT.lint0]
        case 0x360: return lvt[LVT.lint1]
        case 0x370: return lvt[LVT.error]
        case 0x380: return initialCount
        case 0x390: return currentCount(now: now)
        case 0x3e0: return divideConfig
        default: return 0
        }
    }

    public func write(offset: UInt64, value: UInt32, now: UInt64) -> [APICEffect] {
        tracking(writeRegister(offset: offset, value: value, now: now))
    }

    /// Follows the timer effects going out, so that `timerArmedAt` is what the process's timer holds.
    private func tracking(_ effects: [APICEffect]) -> [APICEffect] {
        for effect in effects {
            switch effect {
            case .armTimer(let at): timerArmedAt = at
            case .cancelTimer: timerArmedAt = nil
            default: break
            }
        }
        return effects
    }

    private func writeRegister(offset: UInt64, value: UInt32, now: UInt64) -> [APICEffect] {
        switch offset {
        case 0x80: tpr = value & 0xff
        case 0xb0: return endOfInterrupt()
        case 0xd0: ldr = value & 0xff00_0000
        case 0xe0: dfr = value | 0x0fff_ffff
        case 0xf0:
            svr = value & 0x13ff
            if !softwareEnabled { for i in lvt.indices { lvt[i] |= 1 << 16 } }  // disabling masks every LVT
        case 0x280:
            esr = pendingESR  // a write latches the errors seen since the last write
            pendingESR = 0
        case 0x2f0: lvt[LVT.cmci] = lvtValue(value, mask: 0x1_07ff)
        case 0x300:
            icrLow = value & 0x000c_cfff
            return sendIPI()
        case 0x310: icrHigh = value & 0xff00_0000
        case 0x320:
            let oldMode = timerMode
            lvt[LVT.timer] = lvtValue(value, mask: 0x7_00ff)
            if (oldMode == 2) != (timerMode == 2) {
                // Into or out of TSC-deadline mode disarms the timer (SDM vol. 3, 10.5.4.1), and the initial count
                // reads 0 (as KVM's apic_update_lvtt clears TMICT).
                timerRunning = false
                deadline = 0
                initialCount = 0
                return [.cancelTimer]
            }
            if timerMode != oldMode && timerRunning { return switchCountdown(from: oldMode, now: now) }
        case 0x330: lvt[LVT.thermal] = lvtValue(value, mask: 0x1_07ff)
        case 0x340: lvt[LVT.performance] = lvtValue(value, mask: 0x1_07ff)
        case 0x350: lvt[LVT.lint0] = lvtValue(value, mask: 0x1_a7ff)
        case 0x360: lvt[LVT.lint1] = lvtValue(value, mask: 0x1_a7ff)
        case 0x370: lvt[LVT.error] = lvtValue(value, mask: 0x1_00ff)
        case 0x380:
            guard timerMode != 2 else { return [] }  // ignored in TSC-deadline mode
            initialCount = value
            guard value != 0 else { timerRunning = false; return [.cancelTimer] }
            timerStart = now
            timerRunning = true
            return [.armTimer(atNanoseconds: now + period)]
        case 0x3e0: divideConfig = value & 0xb
        default: break
        }
        return []
    }

    /// One-shot to periodic or back while the timer runs: the count goes on from where it is, it is not restarted
    /// and never reads 0 while armed (KVM keeps the running timer too). Periodic to one-shot counts the period in
    /// progress down to 0; one-shot to periodic reloads the initial count at 0 and goes on.
    private func switchCountdown(from oldMode: UInt32, now: UInt64) -> [APICEffect] {
        if oldMode == 1 {
            // The period in progress becomes the one-shot count: its start is the last reload.
            let oldPeriod = max(UInt64(initialCount) * divisor * Self.timerNanosecondsPerTick, Self.minimumPeriodicNanoseconds)
            if now > timerStart, oldPeriod > 0 { timerStart += (now - timerStart) / oldPeriod * oldPeriod }
        }
        guard period > 0 else { timerRunning = false; return [.cancelTimer] }
        return [.armTimer(atNanoseconds: timerStart + period)]
    }

    private func lvtValue(_ value: UInt32, mask: UInt32) -> UInt32 {
        softwareEnabled ? value & mask : (value & mask) | (1 << 16)
    }

    private func currentCount(now: UInt64) -> UInt32 { countdown.count(now: now) }

    /// What the timer's current-count register follows: enough for another process to compute the register at any
    /// time without asking (see LAPICMirror).
    public struct Countdown: Equatable, Sendable {
        /// 0: stopped (or TSC-deadline mode), 1: one-shot, 2: periodic.
        public var mode: UInt32
        public var initial: UInt32
        public var start: UInt64
        public var nanosecondsPerTick: UInt64

        public init(mode: UInt32, initial: UInt32, start: UInt64, nanosecondsPerTick: UInt64) {
            self.mode = mode
            self.initial = initial
            self.start = start
            self.nanosecondsPerTick = nanosecondsPerTick
        }

        /// The current count at `now` (hostile input safe: any words give some count, never a trap).
        public func count(now: UInt64) -> UInt32 {
            guard mode != 0, initial != 0, nanosecondsPerTick != 0 else { return 0 }
            let ticks = (now &- start) / nanosecondsPerTick
            if mode == 2 { return initial - UInt32(ticks % UInt64(initial)) }
            return ticks >= UInt64(initial) ? 0 : initial - UInt32(ticks)
        }
    }

    public var countdown: Countdown {
        guard timerRunning, timerMode != 2 else { return Countdown(mode: 0, initial: 0, start: 0, nanosecondsPerTick: 0) }
        return Countdown(mode: timerMode == 1 ? 2 : 1, initial: initialCount, start: timerStart,
                         nanosecondsPerTick: divisor * Self.timerNanosecondsPerTick)
    }

    /// TSC-deadline mode: IA32_TSC_DEADLINE, already converted to the model's nanoseconds (0 disarms).
    public func setDeadline(_ at: UInt64, now: UInt64) -> [APICEffect] {
        guard timerMode == 2 else { return [] }
        deadline = at
        if at == 0 { return tracking([.cancelTimer]) }
        return tracking([.armTimer(atNanoseconds: max(at, now))])
    }

    /// The armed time has come: raise the timer vector, re-arm a periodic timer.
    public func timerExpired(now: UInt64) -> [APICEffect] {
        // A timer fires once at its armed time: from then on the process's timer is disarmed until re-armed.
        if let at = timerArmedAt, now >= at { timerArmedAt = nil }
        return tracking(expire(now: now))
    }

    private func expire(now: UInt64) -> [APICEffect] {
        var effects: [APICEffect] = []
        switch timerMode {
        case 1:
            guard timerRunning, period > 0 else { return [] }
            // Next expiry on the period grid, skipping any periods missed while the host was busy. A start after
            // `now` cannot happen on one monotonic clock, but a restored start is a predecessor's word: counting
            // from the start keeps the sum from overflowing.
            let elapsed = now >= timerStart ? now - timerStart : 0
            let next = timerStart + (elapsed / period + 1) * period
            effects.append(.armTimer(atNanoseconds: next))
        case 2:
            guard deadline != 0, now >= deadline else { return [] }
            deadline = 0
        default:
            guard timerRunning else { return [] }
            timerRunning = false
        }
        if timerLVT & (1 << 16) == 0 { accept(vector: UInt8(truncatingIfNeeded: timerLVT), levelTriggered: false) }
        return effects
    }

    // MARK: delivery

    /// Puts a fixed interrupt in IRR (and TMR for level-triggered ones). Vectors below 16 are illegal.
    public func accept(vector: UInt8, levelTriggered: Bool) {
        guard hardwareEnabled else { return }  // no APIC: nothing to accept it
        guard vector >= 16 else { pendingESR |= 1 << 6; return }  // received illegal vector
        if vector == offered { arrivedWhileOffered = levelTriggered }
        irr.insert(vector)
        if levelTriggered { tmr.insert(vector) } else { tmr.remove(vector) }
    }

    /// The vector the CPU would take next, if any: the highest in IRR above the processor priority.
    public var deliverableVector: UInt8? {
        guard softwareEnabled, let v = irr.highest else { return nil }
        return UInt32(v) & 0xf0 > processorPriority & 0xf0 ? v : nil
    }

    /// The CPU took `vector` (interrupt acknowledge): IRR to ISR.
    public func acknowledge(_ vector: UInt8) {
        let again = vector == offered ? arrivedWhileOffered : nil
        offered = nil
        irr.remove(vector)
        isr.insert(vector)
        if let level = again { accept(vector: vector, levelTriggered: level) }
    }

    /// The CPU took `vector` without an offer (its timer's expiry, which the vCPU took itself; see
    /// InterruptController.timerTaken): in service now, out of IRR. An offer of the same vector from elsewhere
    /// stays offered.
    public func takenWithoutOffer(_ vector: UInt8) {
        guard hardwareEnabled, vector >= 16 else { return }
        irr.remove(vector)
        isr.insert(vector)
    }

    private func endOfInterrupt() -> [APICEffect] {
        guard let v = isr.highest else { return [] }
        isr.remove(v)
        // Level-triggered: tell the IOAPIC, unless EOI broadcast is suppressed (SVR bit 12).
        if tmr.contains(v) && svr & 0x1000 == 0 { return [.endOfInterrupt(vector: v)] }
        return []
    }

    private func sendIPI() -> [APICEffect] {
        let vector = UInt8(truncatingIfNeeded: icrLow)
        let mode = InterruptMessage.DeliveryMode(rawValue: UInt8((icrLow >> 8) & 7)) ?? .fixed
        // INIT level de-assert only re-synchronises arbitration IDs on old APICs: nothing to deliver.
        if mode == .initialize && icrLow & (1 << 15) != 0 && icrLow & (1 << 14) == 0 { return [] }
        if mode == .fixed && vector < 16 { pendingESR |= 1 << 5 }  // send illegal vector
        let message = InterruptMessage(vector: vector, deliveryMode: mode, logical: icrLow & (1 << 11) != 0,
                                       destination: UInt8(icrHigh >> 24), levelTriggered: icrLow & (1 << 15) != 0)
        return [.interprocessorInterrupt(message, shorthand: UInt8((icrLow >> 18) & 3))]
    }

    /// Whether this APIC is a destination of `message` (physical ID, or logical flat/cluster model).
    public func isDestination(of message: InterruptMessage) -> Bool {
        guard hardwareEnabled else { return false }
        if !message.logical { return message.destination == 0xff || message.destination == apicID }
        let logicalID = UInt8(ldr >> 24)
        if dfr >> 28 == 0xf { return message.destination & logicalID != 0 }  // flat model
        // Cluster model: high nibble is the cluster, low nibble a bit mask within it.
        return (message.destination >> 4 == logicalID >> 4 || message.destination >> 4 == 0xf)
            && (message.destination & logicalID & 0xf) != 0
    }
}

extension LocalAPIC: Snapshotting {
    /// Everything but the APIC ID is state: the registers as the guest left them, the three vector sets, the LVT,
    /// the timer (its start, running flag, TSC deadline, and the time the process's timer is armed for) and the
    /// vector offered to the vCPU, and IA32_APIC_BASE's enable bit. Times are absolute CLOCK_MONOTONIC nanoseconds (the `now` the process passes),
    /// which a successor on the same host reads on the same clock; nothing is saved relative to a process.
    struct State {
        var apicID: UInt8
        var tpr, ldr, dfr, svr, esr, pendingESR, icrLow, icrHigh: UInt32
        var irr, isr, tmr: VectorSet
        var lvt: [UInt32]
        var divideConfig, initialCount: UInt32
        var timerStart: UInt64
        var timerRunning: Bool
        var deadline: UInt64
        var timerArmedAt: UInt64?
        var offered: UInt8?
        var arrivedWhileOffered: Bool?
        var hardwareEnabled: Bool
    }

    /// What each LVT entry's write path keeps (CMCI, timer, thermal, performance, LINT0, LINT1, error).
    static let lvtWritableBits: [UInt32] = [0x1_07ff, 0x7_00ff, 0x1_07ff, 0x1_07ff, 0x1_a7ff, 0x1_a7ff, 0x1_00ff]
    /// The only errors the model records: send illegal vector (5), received illegal vector (6).
    static let recordedErrors: UInt32 = 0x60

    public func save(to writer: inout SnapshotWriter) {
        writer.u8(apicID)
        for register in [tpr, ldr, dfr, svr, esr, pendingESR, icrLow, icrHigh] { writer.u32(register) }
        for set in [irr, isr, tmr] { for word in set.words { writer.u64(word) } }
        for entry in lvt { writer.u32(entry) }
        writer.u32(divideConfig)
        writer.u32(initialCount)
        writer.u64(timerStart)
        writer.bool(timerRunning)
        writer.u64(deadline)
        writer.bool(timerArmedAt != nil)
        writer.u64(timerArmedAt ?? 0)
        writer.bool(offered != nil)
        writer.u8(offered ?? 0)
        writer.bool(arrivedWhileOffered != nil)
        writer.bool(arrivedWhileOffered ?? false)
        writer.bool(hardwareEnabled)
    }

    /// Refuses a snapshot of another APIC, bits the write paths mask off, vectors below 16 (never accepted), an
    /// enabled LVT entry while the APIC is software-disabled, timer states the timer never reaches, and an offer of
    /// a vector not in IRR; all or nothing.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        apply(try decodeState(from: &reader))
    }

    /// Reads and validates one LAPIC's snapshot without changing the APIC, so that the interrupt controller can
    /// validate all of its parts before it applies any.
    func decodeState(from reader: inout SnapshotReader) throws(SnapshotError) -> State {
        let apicID = try reader.u8()
        var registers: [UInt32] = []
        for _ in 0..<8 { registers.append(try reader.u32()) }
        var sets: [VectorSet] = []
        for _ in 0..<3 {
            var words: [UInt64] = []
            for _ in 0..<4 { words.append(try reader.u64()) }
            guard let set = VectorSet(words: words) else { throw .invalid("LAPIC vector set of \(words.count) words") }
            sets.append(set)
        }
        var lvt: [UInt32] = []
        for _ in 0..<Self.lvtWritableBits.count { lvt.append(try reader.u32()) }
        let divideConfig = try reader.u32()
        let initialCount = try reader.u32()
        let timerStart = try reader.u64()
        let timerRunning = try reader.bool()
        let deadline = try reader.u64()
        let timerArmedAt = try Self.optional(try reader.bool(), try reader.u64(), "armed time")
        let offered = try Self.optional(try reader.bool(), try reader.u8(), "offered vector")
        let arrivedPresent = try reader.bool()
        let arrivedLevel = try reader.bool()
        guard arrivedPresent || !arrivedLevel else { throw .invalid("LAPIC absent re-raise flag holds true") }
        let arrived: Bool? = arrivedPresent ? arrivedLevel : nil
        let hardwareEnabled = try reader.bool()
        let state = State(apicID: apicID, tpr: registers[0], ldr: registers[1], dfr: registers[2], svr: registers[3],
                          esr: registers[4], pendingESR: registers[5], icrLow: registers[6], icrHigh: registers[7],
                          irr: sets[0], isr: sets[1], tmr: sets[2], lvt: lvt, divideConfig: divideConfig,
                          initialCount: initialCount, timerStart: timerStart, timerRunning: timerRunning,
                          deadline: deadline, timerArmedAt: timerArmedAt, offered: offered,
                          arrivedWhileOffered: arrived, hardwareEnabled: hardwareEnabled)
        try validate(state)
        return state
    }

    /// A flag and a value; an absent value must be 0, so that every state has one snapshot.
    private static func optional<T: FixedWidthInteger>(_ present: Bool, _ value: T, _ what: String) throws(SnapshotError) -> T? {
        guard present || value == 0 else { throw .invalid("LAPIC absent \(what) holds \(value)") }
        return present ? value : nil
    }

    private func validate(_ s: State) throws(SnapshotError) {
        func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
        guard s.apicID == apicID else { throw .invalid("snapshot of LAPIC \(s.apicID) for LAPIC \(apicID)") }
        guard s.tpr & ~0xff == 0 else { throw .invalid("LAPIC TPR \(hex(s.tpr))") }
        guard s.ldr & 0x00ff_ffff == 0 else { throw .invalid("LAPIC LDR \(hex(s.ldr))") }
        guard s.dfr | 0x0fff_ffff == s.dfr else { throw .invalid("LAPIC DFR \(hex(s.dfr))") }
        guard s.svr & ~0x13ff == 0 else { throw .invalid("LAPIC SVR \(hex(s.svr))") }
        guard s.esr & ~Self.recordedErrors == 0, s.pendingESR & ~Self.recordedErrors == 0 else {
            throw .invalid("LAPIC ESR \(hex(s.esr)), pending \(hex(s.pendingESR))")
        }
        guard s.icrLow & ~0x000c_cfff == 0, s.icrHigh & ~0xff00_0000 == 0 else {
            throw .invalid("LAPIC ICR \(hex(s.icrHigh)):\(hex(s.icrLow))")
        }
        // Vectors 0-15 are refused at acceptance, so no set can hold one.
        for (name, set) in [("IRR", s.irr), ("ISR", s.isr), ("TMR", s.tmr)] where set.words[0] & 0xffff != 0 {
            throw .invalid("LAPIC \(name) holds a vector below 16")
        }
        for (i, entry) in s.lvt.enumerated() {
            guard entry & ~Self.lvtWritableBits[i] == 0 else { throw .invalid("LAPIC LVT entry \(i) \(hex(entry))") }
            // Disabling the APIC masks every entry, and no entry can be unmasked while it is disabled.
            guard s.svr & 0x100 != 0 || entry & (1 << 16) != 0 else {
                throw .invalid("LAPIC LVT entry \(i) unmasked while the APIC is disabled")
            }
        }
        guard s.divideConfig & ~0xb == 0 else { throw .invalid("LAPIC divide configuration \(hex(s.divideConfig))") }
        let mode = (s.lvt[LVT.timer] >> 17) & 3
        // Writing the count starts the timer except in TSC-deadline mode, a zero count stops it, and a mode change
        // stops it and clears the deadline.
        guard !s.timerRunning || (s.initialCount != 0 && mode != 2) else {
            throw .invalid("LAPIC timer running in mode \(mode) with count \(s.initialCount)")
        }
        guard s.deadline == 0 || mode == 2 else { throw .invalid("LAPIC TSC deadline set in timer mode \(mode)") }
        // CLOCK_MONOTONIC does not reach 2^63 ns (292 years); below it, start + period cannot overflow.
        guard s.timerStart < 1 << 63 else { throw .invalid("LAPIC timer start \(s.timerStart)") }
        // A time of 0 disarms a timerfd: no effect ever asks for it.
        guard s.timerArmedAt != 0 else { throw .invalid("LAPIC timer armed for time 0") }
        // Disabling resets the APIC and it accepts nothing while disabled: a disabled one holds its power-up state.
        guard s.hardwareEnabled || (s.irr == VectorSet() && s.isr == VectorSet() && s.svr == 0xff && s.offered == nil
                                    && !s.timerRunning && s.deadline == 0 && s.timerArmedAt == nil) else {
            throw .invalid("LAPIC disabled through IA32_APIC_BASE with state beyond its reset values")
        }
        if let v = s.offered {
            // The offer is IRR's deliverable vector and stays in IRR until acknowledged.
            guard s.irr.contains(v) else { throw .invalid("LAPIC offers vector \(hex(v)), not in IRR") }
        } else if s.arrivedWhileOffered != nil {
            throw .invalid("LAPIC re-raise flag without an offer")
        }
    }

    func apply(_ s: State) {
        tpr = s.tpr; ldr = s.ldr; dfr = s.dfr; svr = s.svr; esr = s.esr; pendingESR = s.pendingESR
        icrLow = s.icrLow; icrHigh = s.icrHigh
        irr = s.irr; isr = s.isr; tmr = s.tmr
        lvt = s.lvt
        divideConfig = s.divideConfig; initialCount = s.initialCount
        timerStart = s.timerStart; timerRunning = s.timerRunning; deadline = s.deadline; timerArmedAt = s.timerArmedAt
        offered = s.offered  // clears the re-raise flag: set it after
        arrivedWhileOffered = s.arrivedWhileOffered
        hardwareEnabled = s.hardwareEnabled
    }
}
