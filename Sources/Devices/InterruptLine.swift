/// An interrupt line a device drives. The device knows nothing about where it leads (an IOAPIC pin in the
/// irqchip process, a test recorder, or nowhere yet).
public protocol InterruptLine: AnyObject {
    func set(_ asserted: Bool)
}

/// A line that goes nowhere; devices keep computing their level so a real line can be attached later.
public final class UnconnectedLine: InterruptLine {
    public init() {}
    public func set(_ asserted: Bool) {}
}
