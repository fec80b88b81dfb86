import Channel

/// The irqchip's own operations on its channels, beside the guest's LAPIC and IOAPIC accesses (which travel as
/// ordinary MMIO). All are posted.
extension MessageKind {
    /// The vCPU injected the vector in `data`: the irqchip moves it from IRR to ISR. Size 1.
    @inlinable public static var interruptAck: MessageKind { .device(0) }
    /// A device drives an interrupt line: `address` is the IOAPIC pin, `data` the level (0 or 1). Size 1.
    @inlinable public static var lineLevel: MessageKind { .device(1) }
    /// The vCPU wrote IA32_TSC_DEADLINE: `data` is when it expires, in CLOCK_MONOTONIC nanoseconds (the clock
    /// every process shares), or `TimerDeadline.disarmed` for a write of 0. Absolute, so that the irqchip's own
    /// delay in taking the message does not move the expiry, and a restarted irqchip that handles it again arms
    /// the same time. Size 8.
    @inlinable public static var timerDeadline: MessageKind { .device(2) }
    /// When the vCPU made its next message on this lane (CLOCK_MONOTONIC ns): sent before a write whose timing
    /// matters (the LAPIC timer's initial count), so that the timer counts from the guest's write, not from when
    /// the irqchip woke up to take it. Size 8.
    @inlinable public static var timestamp: MessageKind { .device(3) }
    /// The vCPU's IA32_APIC_BASE changed (KVM applies the WRMSR itself and reports the value in kvm_run.apic_base):
    /// `data` is the MSR's new value; the irqchip follows its global enable bit. Size 8.
    @inlinable public static var apicBase: MessageKind { .device(4) }
    /// The vCPU, halted, read its LAPIC timer's expiry itself (before the irqchip did: the timerfd gives each
    /// expiry to one reader) and injected the timer's vector in `data`, which the irqchip's published copy showed
    /// the CPU would take at once: the irqchip counts the expiry as the timer's and puts the vector in service, as
    /// for an offered one the vCPU acknowledged. One wake-up from expiry to handler instead of two. Size 1.
    @inlinable public static var timerTaken: MessageKind { .device(5) }
    /// The vCPU stopped watching its LAPIC timer (InterruptMailbox.leaveTimer) without taking an expiry: it left
    /// HLT for something else, or an expiry came that the copy did not show taken at once. The message is the
    /// wake-up: the irqchip reads and waits on that timerfd again. Size 1, no data.
    @inlinable public static var timerWatchEnded: MessageKind { .device(6) }
}

/// How a `timerDeadline` message carries "at this time, or disarmed".
public enum TimerDeadline {
    public static let disarmed = UInt64.max

    public static func encode(at: UInt64?) -> UInt64 {
        guard let at else { return disarmed }
        return min(at, disarmed - 1)
    }

    public static func decode(_ data: UInt64) -> UInt64? { data == disarmed ? nil : data }

    /// A time a vCPU said something happened at, as the irqchip uses it at `now`: not in the future (the clock is
    /// shared, so only a hostile peer says so) and not more than a second back.
    public static func plausible(_ stamp: UInt64, now: UInt64) -> UInt64 {
        stamp > now || now - stamp > 1_000_000_000 ? now : stamp
    }
}
