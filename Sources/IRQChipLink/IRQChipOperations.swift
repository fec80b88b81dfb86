import Channel

/// The irqchip's own operations on its channels, beside the guest's LAPIC and IOAPIC accesses (which travel as
/// ordinary MMIO). All are posted.
extension MessageKind {
    /// The vCPU injected the vector in `data`: the irqchip moves it from IRR to ISR. Size 1.
    public static let interruptAck = MessageKind.device(0)
    /// A device drives an interrupt line: `address` is the IOAPIC pin, `data` the level (0 or 1). Size 1.
    public static let lineLevel = MessageKind.device(1)
    /// The vCPU wrote IA32_TSC_DEADLINE: `data` is how many nanoseconds from now it expires (0: already due), or
    /// `TimerDeadline.disarmed` for a write of 0. Size 8.
    public static let timerDeadline = MessageKind.device(2)
}

/// How a `timerDeadline` message carries "nanoseconds from now, or disarmed".
public enum TimerDeadline {
    public static let disarmed = UInt64.max

    public static func encode(nanosecondsFromNow: UInt64?) -> UInt64 {
        guard let ns = nanosecondsFromNow else { return disarmed }
        return min(ns, disarmed - 1)
    }

    public static func decode(_ data: UInt64) -> UInt64? { data == disarmed ? nil : data }
}
