import Devices

/// Where every device of the machine sits and which process serves it: the one owner of the guest's port map,
/// MMIO map and interrupt pins. The supervisor builds the vcpu process's routes, the devices' interrupt lines
/// and the firmware tables from it; nobody else numbers a port or a pin.
public struct MachineLayout: Sendable, Equatable {
    /// One device as the machine places it.
    public struct Device: Sendable, Equatable {
        public var name: String
        public var server: Server
        public var ports: ClosedRange<UInt16>?
        public var mmio: MMIOWindow?
        /// The IOAPIC pin it raises (ISA IRQ n is pin n, as the MP table says).
        public var irq: Int?
        /// Where KVM may queue the guest's writes instead of exiting (see CoalescedZone); posted writes only.
        public var coalescedWrites: [CoalescedZone]

        /// A virtio-mmio device's QueueNotify register: KVM signals the device's eventfd on writes there, so
        /// queue notifications reach the device process without an exit to the vcpu process.
        public var queueNotifyAddress: UInt64? {
            guard server.role.isVirtio, let w = mmio else { return nil }
            return w.base + MachineLayout.virtioQueueNotifyOffset
        }

        public init(name: String, server: Server, ports: ClosedRange<UInt16>? = nil, mmio: MMIOWindow? = nil, irq: Int? = nil,
                    coalescedWrites: [CoalescedZone] = []) {
            self.name = name
            self.server = server
            self.ports = ports
            self.mmio = mmio
            self.irq = irq
            self.coalescedWrites = coalescedWrites
        }

        /// Whether `zone` is this device's and its writes are posted (in a window: the register it starts at; the
        /// router orders an access by its first byte).
        func holdsPosted(_ zone: CoalescedZone) -> Bool {
            guard zone.size > 0 else { return false }
            if zone.port {
                guard let p = ports else { return false }
                return zone.address >= UInt64(p.lowerBound) && zone.address + UInt64(zone.size) - 1 <= UInt64(p.upperBound)
            }
            guard let w = mmio, zone.address >= w.base, zone.address - w.base + UInt64(zone.size) <= w.size else { return false }
            return (w.exceptions[zone.address - w.base] ?? w.writes) == .posted
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
        case outOfPins(String)
        /// A coalesced zone outside the device's ports or window, or over writes that are not posted.
        case coalescedNotPosted(String)
        public var description: String {
            switch self {
            case .coalescedNotPosted(let d): return "\(d)'s coalesced writes must be its own posted writes"
            case .overlap(let a, let b): return "\(a) and \(b) overlap"
            case .pinTaken(let pin, let a, let b): return "\(a) and \(b) both raise IOAPIC pin \(pin)"
            case .outOfPins(let d): return "no IOAPIC pin is left for \(d)"
            }
        }
    }

    public init(devices: [Device] = []) throws(LayoutError) {
        self.devices = []
        for d in devices { try add(d) }
    }

    /// Adds a device; refuses one that overlaps a placed device's ports, window or pin.
    public mutating func add(_ device: Device) throws(LayoutError) {
        guard device.coalescedWrites.allSatisfy(device.holdsPosted) else { throw .coalescedNotPosted(device.name) }
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
        // IOWIN and EOI writes wait (an unmask a device's next raise must not overtake); selecting a register is
        // posted: whatever reads or writes through the window next comes after it on the same ring.
        let ioapic = MMIOWindow(base: IOAPIC.defaultBase, size: 0x1000, writes: .synchronous, exceptions: [IOAPIC.selectRegister: .posted])
        let devices: [Device] = [
            // Its writes wait in KVM's ring for the next exit, which every read of the UART is: a console line costs
            // one exit per byte (the LSR poll) instead of two.
            Device(name: "com1", server: Server(.pio), ports: Serial8250.com1...Serial8250.com1 + 7, irq: 4,
                   coalescedWrites: [CoalescedZone(address: UInt64(Serial8250.com1), size: 8, port: true)]),
            Device(name: "debug-exit", server: Server(.pio), ports: DebugExit.defaultPort...DebugExit.defaultPort),
            // The keyboard's IRQ 1 belongs to the data port, where its scancodes are read.
            Device(name: "i8042-data", server: Server(.pio), ports: I8042.dataPort...I8042.dataPort, irq: 1),
            Device(name: "i8042-command", server: Server(.pio), ports: I8042.commandPort...I8042.commandPort),
            Device(name: "rtc", server: Server(.pio), ports: CMOSRTC.defaultPort...CMOSRTC.defaultPort + 1),
            Device(name: "boot-timer", server: Server(.pio), ports: BootTimer.defaultPort...BootTimer.defaultPort),
            Device(name: "lapic", server: Server(.irqchip), mmio: lapic),
            // Selecting a register does nothing until the window's access, an exit, which brings it along.
            Device(name: "ioapic", server: Server(.irqchip), mmio: ioapic,
                   coalescedWrites: [CoalescedZone(address: IOAPIC.defaultBase + IOAPIC.selectRegister, size: 4, port: false)]),
        ]
        do { return try MachineLayout(devices: devices) } catch { preconditionFailure("the standard layout overlaps: \(error)") }
    }()

    /// Where virtio-mmio devices go: one 4 KiB window each from here (Firecracker's x86 MMIO area, above the most
    /// RAM a VM can have below the 32-bit gap and below the IOAPIC), and IOAPIC pins from 5 (4 is COM1).
    public static let virtioBase: UInt64 = 0xd000_0000
    public static let virtioWindow: UInt64 = 0x1000
    public static let firstVirtioPin = 5
    /// QueueNotify in the virtio-mmio register window (virtio 1.2, 4.2.2).
    public static let virtioQueueNotifyOffset: UInt64 = 0x50
    /// InterruptACK in the virtio-mmio register window (virtio 1.2, 4.2.2).
    public static let virtioInterruptACKOffset: UInt64 = 0x64
    public static let lastPin = 23

    /// The standard machine with `virtio` devices added in order: `virtio-blk0`, `virtio-blk1`, ..., `virtio-rng0`.
    ///
    /// Register writes are posted but for InterruptACK, which waits until the device has applied it. A driver reads
    /// InterruptStatus, acknowledges what it read, then looks at its used rings. Posted, the acknowledgement could
    /// still be on the ring while the device (in parallel, in its own process) publishes a used buffer and finds
    /// the status bit still set, so raises nothing new; the acknowledgement then clears that bit, and a buffer the
    /// driver had looked for too early waits for some later interrupt, perhaps forever (a vsock connection request).
    public static func with(virtio roles: [Role]) throws(LayoutError) -> MachineLayout {
        var layout = standard
        var count: [Role: Int] = [:]
        for (i, role) in roles.enumerated() {
            precondition(role.isVirtio)
            let pin = firstVirtioPin + i
            let server = Server(role, instance: count[role, default: 0])
            count[role, default: 0] += 1
            guard pin <= lastPin else { throw .outOfPins(server.description) }
            try layout.add(Device(name: server.description, server: server,
                                  mmio: MMIOWindow(base: virtioBase + UInt64(i) * virtioWindow, size: virtioWindow, writes: .posted,
                                                   exceptions: [virtioInterruptACKOffset: .synchronous]),
                                  irq: pin))
        }
        return layout
    }

    /// The processes that serve devices, in the order of the vcpu process's channels: as the devices were placed.
    public var servers: [Server] {
        var seen: [Server] = []
        for d in devices where !seen.contains(d.server) { seen.append(d.server) }
        return seen
    }

    /// The virtio-mmio devices, in order, with their windows and pins (for ACPI, the command line, the processes).
    public var virtioDevices: [Device] { devices.filter { $0.server.role.isVirtio } }

    /// Linux's description of the virtio-mmio devices for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES (the
    /// distro kernel finds them through ACPI instead), e.g. `virtio_mmio.device=4K@0xd0000000:5`.
    public var virtioCommandLine: String {
        // Appended, not `joined(separator:)`: the standard library's generic join scans every protocol conformance of
        // vmm at its first call in a process, and this is on the supervisor's way to the guest.
        var line = ""
        for d in virtioDevices {
            guard let w = d.mmio, let irq = d.irq else { continue }
            line += (line.isEmpty ? "" : " ") + "virtio_mmio.device=\(w.size >> 10)K@0x\(String(w.base, radix: 16)):\(irq)"
        }
        return line
    }

    /// The devices that raise an interrupt, one lane each of the irqchip's lines channel: lane i drives pin
    /// `interruptLines[i].pin`, and the irqchip holds each lane to its pin. A process with two devices that
    /// interrupt (the pio: COM1 and the i8042) drives two lanes.
    public var interruptLines: [(device: String, server: Server, pin: Int)] {
        devices.compactMap { d in d.irq.map { (d.name, d.server, $0) } }
    }

    /// The lane of `interruptLines` that the device called `name` drives.
    public func interruptLane(of name: String) -> Int? { interruptLines.firstIndex { $0.device == name } }

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
            },
            coalesced: devices.flatMap(\.coalescedWrites))
    }

    /// The IOAPIC pin of the device called `name`.
    public func irq(of name: String) -> Int? { devices.first { $0.name == name }?.irq }
}
