import KVM

/// IA32_TSC_DEADLINE for a local APIC that lives in another process: the vCPU keeps the MSR's value and turns a
/// write (a guest TSC value) into "nanoseconds from now" for the irqchip, whose clock is not the guest's TSC.
struct TSCDeadline {
    static let msrIndex: UInt32 = 0x6e0
    static let tscMSR: UInt32 = 0x10

    private let tscKHz: UInt64
    private var value: UInt64 = 0

    init(tscKHz: Int) { self.tscKHz = UInt64(max(1, tscKHz)) }

    /// The guest wrote `deadline` while its TSC read `now`: how many nanoseconds from now the timer expires
    /// (0: already due), nil for a write of 0, which disarms it.
    mutating func write(_ deadline: UInt64, now: UInt64) -> UInt64? {
        value = deadline
        guard deadline != 0 else { return nil }
        guard deadline > now else { return 0 }
        let nanoseconds = Double(deadline - now) * 1e6 / Double(tscKHz)
        return nanoseconds >= Double(UInt64.max >> 1) ? UInt64.max >> 1 : UInt64(nanoseconds)
    }

    /// What a read returns: the armed deadline, or 0 once it has passed (the timer fired and cleared it).
    func read(now: UInt64) -> UInt64 { value > now ? value : 0 }
}
