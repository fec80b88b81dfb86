/// An interrupt the IOAPIC (or an IPI) hands to local APICs.
public struct InterruptMessage: Equatable, Sendable {
    public enum DeliveryMode: UInt8, Sendable { case fixed = 0, lowestPriority = 1, smi = 2, nmi = 4, initialize = 5, startup = 6, external = 7 }
    public var vector: UInt8
    public var deliveryMode: DeliveryMode
    /// Logical (true) or physical destination.
    public var logical: Bool
    public var destination: UInt8
    public var levelTriggered: Bool

    public init(vector: UInt8, deliveryMode: DeliveryMode, logical: Bool, destination: UInt8, levelTriggered: Bool) {
        self.vector = vector
        self.deliveryMode = deliveryMode
        self.logical = logical
        self.destination = destination
        self.levelTriggered = levelTriggered
    }
}

/// The 82093AA I/O APIC as Linux programs it: IOREGSEL/IOWIN at offsets 0x00/0x10 of its MMIO page, 24 pins,
/// edge and level triggering with remote IRR, masking, and the EOI register of version 0x20 (offset 0x40).
/// Pure model: pin changes and register writes return the messages to deliver.
public final class IOAPIC {
    public static let defaultBase: UInt64 = 0xfec0_0000
    /// IOREGSEL's offset in the MMIO page.
    public static let selectRegister: UInt64 = 0x00
    public static let pins = 24
    public static let version: UInt32 = 0x20

    struct Redirection {
        var raw: UInt64 = 1 << 16  // masked at reset
        var vector: UInt8 { UInt8(truncatingIfNeeded: raw) }
        var deliveryMode: UInt8 { UInt8((raw >> 8) & 7) }
        var logical: Bool { raw & (1 << 11) != 0 }
        var activeLow: Bool { raw & (1 << 13) != 0 }
        var remoteIRR: Bool {
            get { raw & (1 << 14) != 0 }
            set { raw = newValue ? raw | (1 << 14) : raw & ~(1 << 14) }
        }
        var levelTriggered: Bool { raw & (1 << 15) != 0 }
        var masked: Bool { raw & (1 << 16) != 0 }
        var destination: UInt8 { UInt8(truncatingIfNeeded: raw >> 56) }
    }

    public private(set) var id: UInt8 = 0
    private var select: UInt8 = 0
    private var table = [Redirection](repeating: Redirection(), count: IOAPIC.pins)
    /// The electrical level of each pin, as the devices drive it (true: asserted).
    private var asserted = [Bool](repeating: false, count: IOAPIC.pins)

    /// The ID given at creation, which may be wider than the 4 bits a guest write keeps.
    private let initialID: UInt8

    public init(id: UInt8 = 0) {
        self.id = id
        initialID = id
    }

    // MARK: MMIO

    public func read(offset: UInt64) -> UInt32 {
        switch offset {
        case 0x00: return UInt32(select)
        case 0x10: return readRegister(select)
        default: return 0
        }
    }

    /// A 32-bit MMIO write; returns interrupts that became deliverable (unmasking a pin that is asserted).
    public func write(offset: UInt64, value: UInt32) -> [InterruptMessage] {
        switch offset {
        case 0x00: select = UInt8(truncatingIfNeeded: value)
        case 0x10: return writeRegister(select, value)
        case 0x40: return endOfInterrupt(vector: UInt8(truncatingIfNeeded: value))
        default: break
        }
        return []
    }

    private func readRegister(_ index: UInt8) -> UInt32 {
        switch index {
        case 0x00: return UInt32(id) << 24
        case 0x01: return UInt32(Self.pins - 1) << 16 | Self.version
        case 0x02: return UInt32(id) << 24
        case 0x10..<(0x10 + UInt8(Self.pins * 2)):
            let entry = table[Int(index - 0x10) / 2].raw
            return index & 1 == 0 ? UInt32(truncatingIfNeeded: entry) : UInt32(truncatingIfNeeded: entry >> 32)
        default: return 0xffff_ffff
        }
    }

    private func writeRegister(_ index: UInt8, _ value: UInt32) -> [InterruptMessage] {
        switch index {
        case 0x00: id = UInt8((value >> 24) & 0xf)
        case 0x10..<(0x10 + UInt8(Self.pins * 2)):
            let pin = Int(index - 0x10) / 2
            var e = table[pin]
            if index & 1 == 0 {
                // Delivery status (12) and remote IRR (14) are read-only.
                let keep: UInt64 = (1 << 12) | (1 << 14)
                e.raw = (e.raw & (0xffff_ffff_0000_0000 | keep)) | (UInt64(value) & ~keep)
            } else {
                e.raw = (e.raw & 0xffff_ffff) | (UInt64(value) << 32)
            }
            if !e.levelTriggered { e.remoteIRR = false }
            table[pin] = e
            return service(pin)
        default: break
        }
        return []
    }

    // MARK: pins

    /// A device drives pin `pin` to `level`. Edge-triggered pins deliver on the rising edge; level-triggered pins
    /// deliver while asserted and not yet acknowledged (remote IRR clear).
    public func setPin(_ pin: Int, _ level: Bool) -> [InterruptMessage] {
        guard (0..<Self.pins).contains(pin) else { return [] }
        let e = table[pin]
        let active = e.activeLow ? !level : level
        let rising = active && !asserted[pin]
        asserted[pin] = active
        if e.levelTriggered { return service(pin) }
        return rising ? service(pin, edge: true) : []
    }

    /// The local APIC's EOI for a level-triggered vector (broadcast, or the EOI register): clears remote IRR of
    /// the pins using that vector and delivers again if the line is still asserted.
    public func endOfInterrupt(vector: UInt8) -> [InterruptMessage] {
        var out: [InterruptMessage] = []
        for pin in 0..<Self.pins where table[pin].vector == vector && table[pin].levelTriggered && table[pin].remoteIRR {
            table[pin].remoteIRR = false
            out += service(pin)
        }
        return out
    }

    private func service(_ pin: Int, edge: Bool = false) -> [InterruptMessage] {
        var e = table[pin]
        guard !e.masked else { return [] }
        if e.levelTriggered {
            guard asserted[pin], !e.remoteIRR else { return [] }
            e.remoteIRR = true
            table[pin] = e
        } else if !edge {
            return []
        }
        let mode = InterruptMessage.DeliveryMode(rawValue: e.deliveryMode) ?? .fixed
        return [InterruptMessage(vector: e.vector, deliveryMode: mode, logical: e.logical, destination: e.destination,
                                 levelTriggered: e.levelTriggered)]
    }

    /// Remote IRR of a pin (for tests and state snapshots).
    public func remoteIRR(pin: Int) -> Bool { table[pin].remoteIRR }
}

extension IOAPIC: Snapshotting {
    /// The ID, IOREGSEL, the redirection table (remote IRR included) and the level of each pin. The pin levels
    /// are state here rather than wiring: devices send a level only when it changes, so a successor that forgot
    /// them would miss the next rising edge or re-delivery after EOI.
    struct State {
        var id: UInt8
        var select: UInt8
        var table: [UInt64]
        var asserted: [Bool]
    }

    public func save(to writer: inout SnapshotWriter) {
        writer.u8(id)
        writer.u8(select)
        for entry in table { writer.u64(entry.raw) }
        var levels: UInt32 = 0
        for (pin, level) in asserted.enumerated() where level { levels |= 1 << UInt32(pin) }
        writer.u32(levels)
    }

    /// Refuses an ID no write or creation gave, a delivery-status bit (never set: messages go out at once), a
    /// remote IRR on an edge-triggered pin, and levels for pins that do not exist; all or nothing.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        apply(try decodeState(from: &reader))
    }

    /// Reads and validates a snapshot without changing the IOAPIC (for the interrupt controller, which validates
    /// all of its parts first).
    func decodeState(from reader: inout SnapshotReader) throws(SnapshotError) -> State {
        let id = try reader.u8()
        let select = try reader.u8()
        var table: [UInt64] = []
        for _ in 0..<Self.pins { table.append(try reader.u64()) }
        let levels = try reader.u32()

        guard id <= 0xf || id == initialID else { throw .invalid("IOAPIC ID \(id)") }
        for (pin, raw) in table.enumerated() {
            let entry = Redirection(raw: raw)
            guard raw & (1 << 12) == 0 else { throw .invalid("IOAPIC pin \(pin) delivery status set") }
            // A write that makes a pin edge-triggered clears its remote IRR, and only level pins set it.
            guard !entry.remoteIRR || entry.levelTriggered else {
                throw .invalid("IOAPIC pin \(pin) remote IRR set on an edge-triggered pin")
            }
        }
        guard levels >> UInt32(Self.pins) == 0 else {
            throw .invalid("IOAPIC levels 0x\(String(levels, radix: 16)) for pins beyond \(Self.pins - 1)")
        }
        return State(id: id, select: select, table: table,
                     asserted: (0..<Self.pins).map { levels & (1 << UInt32($0)) != 0 })
    }

    func apply(_ s: State) {
        id = s.id
        select = s.select
        table = s.table.map { Redirection(raw: $0) }
        asserted = s.asserted
    }
}
