import Devices

/// Where every device of the machine sits and which process serves it: the one owner of the guest's port map,
/// MMIO map and interrupt pins. The supervisor builds the vcpu process's routes, the devices' interrupt lines
/// and the firmware tables from it; nobody else numbers a port or a pin.
public struct MachineLayout: Sendable, Equatable {
    /// One device as the machine places it.
    public struct Device: Sendable, Equatable {
        public var name: String
        public var server: Role
        public var ports: ClosedRange<UInt16>?
        public var mmio: MMIOWindow?
        /// The IOAPIC pin it raises (ISA IRQ n is pin n, as the MP table says).
        public var irq: Int?

        public init(name: String, server: Role, ports: ClosedRange<UInt16>? = nil, mmio: MMIOWindow? = nil, irq: Int? = nil) {
            self.name = name
            self.server = server
            self.ports = ports
            self.mmio = mmio
            self.irq = irq
        }
    }

    /// A device's guest-physical register window and how writes to it are ordered.
    public struct MMIOWindow: Sendable, Equatable {
        public var base: UInt64
        public var size: UInt64
        public var writes: WriteOrdering
        public var exceptions: [UInt64: WriteOrdering]
        public init(base: UInt64, size: UInt64, writes: WriteOrdering, exceptions: [UInt64: WriteOrdering] = [:]) {
            self.base = base
            self.size = size
            self.writes = writes
            self.exceptions = exceptions
        }
    }

    public private(set) var devices: [Device]

    /// Layout errors: two devices claiming one port, address or pin.
    public enum LayoutError: Error, Equatable, CustomStringConvertible {
        case overlap(String, String)
        case pinTaken(Int, String, String)
        public var description: String {
            switch self {
            case .overlap(let a, let b): return "\(a) and \(b) overlap"
            case .pinTaken(let pin, let a, let b): return "\(a) and \(b) both raise IOAPIC pin \(pin)"
            }
        }
    }

    public init(devices: [Device] = []) throws(LayoutError) {
        self.devices = []
        for d in devices { try add(d) }
    }

    /// Adds a device; refuses one that overlaps a placed device's ports, window or pin.
    public mutating func add(_ device: Device) throws(LayoutError) {
        for d in devices {
            if let a = d.ports, let b = device.ports, a.overlaps(b) { throw .overlap(d.name, device.name) }
            if let a = d.mmio, let b = device.mmio, a.base < b.base &+ b.size, b.base < a.base &+ a.size {
                throw .overlap(d.name, device.name)
            }
            if let a = d.irq, a == device.irq { throw .pinTaken(a, d.name, device.name) }
        }
        devices.append(device)
    }

    /// The machine every VM has: the legacy port devices Linux expects, served by the pio process, and the
    /// local APICs and IOAPIC, served by the irqchip process.
    public static let standard: MachineLayout = {
        let lapic = MMIOWindow(base: LocalAPIC.defaultBase, size: 0x1000, writes: .posted,
                               exceptions: [LocalAPIC.Register.icrLow: .synchronous,
                                            LocalAPIC.Register.eoi: .afterPostedWritesElsewhere])
        let devices: [Device] = [
            Device(name: "com1", server: .pio, ports: Serial8250.com1...Serial8250.com1 + 7, irq: 4),
            Device(name: "debug-exit", server: .pio, ports: DebugExit.defaultPort...DebugExit.defaultPort),
            Device(name: "i8042-data", server: .pio, ports: I8042.dataPort...I8042.dataPort),
            Device(name: "i8042-command", server: .pio, ports: I8042.commandPort...I8042.commandPort),
            Device(name: "rtc", server: .pio, ports: CMOSRTC.defaultPort...CMOSRTC.defaultPort + 1),
            Device(name: "boot-timer", server: .pio, ports: BootTimer.defaultPort...BootTimer.defaultPort),
            Device(name: "lapic", server: .irqchip, mmio: lapic),
            Device(name: "ioapic", server: .irqchip, mmio: MMIOWindow(base: IOAPIC.defaultBase, size: 0x1000, writes: .synchronous)),
        ]
        do { return try MachineLayout(devices: devices) } catch { preconditionFailure("the standard layout overlaps: \(error)") }
    }()

    /// The roles that serve devices, in the order of the vcpu process's channels.
    public var servers: [Role] { Role.allCases.filter { r in devices.contains { $0.server == r } } }

    /// The vcpu process's routes: channel i is `servers[i]`.
    public var routes: AccessRoutes {
        let channel = Dictionary(uniqueKeysWithValues: servers.enumerated().map { ($1, $0) })
        return AccessRoutes(
            ports: devices.compactMap { d in
                d.ports.flatMap { p in channel[d.server].map { AccessRoutes.PortRange(first: p.lowerBound, last: p.upperBound, channel: $0) } }
            },
            mmio: devices.compactMap { d in
                d.mmio.flatMap { w in
                    channel[d.server].map { AccessRoutes.MMIORange(base: w.base, size: w.size, channel: $0, writes: w.writes, exceptions: w.exceptions) }
                }
            })
    }

    /// The IOAPIC pin of the device called `name`.
    public func irq(of name: String) -> Int? { devices.first { $0.name == name }?.irq }
}
