/// The processes of a VM other than the supervisor. One binary plays every role (`vmm _role ROLE SPEC`); the role
/// names its policy file, its process name and what it serves.
public enum Role: String, CaseIterable, Codable, Sendable {
    /// The KVM VM, one thread per vCPU, the exit dispatch, the MMU.
    case vcpu
    /// The legacy port devices: COM1, the i8042, the CMOS RTC, the boot timer, debug-exit.
    case pio
    /// The local APICs and the IOAPIC.
    case irqchip
    /// One virtio-blk disk (one process per drive).
    case virtioBlock = "virtio-blk"
    /// One virtio-net interface on a tap (one process per interface).
    case virtioNet = "virtio-net"
    /// The virtio-vsock device (host sockets bridged to the guest's).
    case virtioVsock = "virtio-vsock"
    /// The virtio-rng entropy device.
    case virtioRNG = "virtio-rng"

    /// The seccomp policy this role runs under, a file in `Policies/`.
    public var policyFile: String { "\(rawValue).policy" }

    /// What `ps` shows for the process (at most 15 characters reach the kernel).
    public var processName: String { self == .virtioVsock ? "vmm-vsock" : "vmm-\(rawValue)" }

    /// Whether this role serves guest accesses over channels (every role but the vcpu process).
    public var servesDevices: Bool { self != .vcpu }

    /// Roles with one process per device, told apart by an instance number.
    public var isVirtio: Bool { self == .virtioBlock || self == .virtioNet || self == .virtioVsock || self == .virtioRNG }
}

/// One process that serves devices: its role and, for roles with a process per device, which one.
public struct Server: Hashable, Codable, Sendable, CustomStringConvertible {
    public var role: Role
    public var instance: Int
    public init(_ role: Role, instance: Int = 0) {
        self.role = role
        self.instance = instance
    }

    /// "pio", "irqchip", "virtio-blk0", "virtio-blk1", "virtio-rng0".
    public var description: String { role.isVirtio ? "\(role.rawValue)\(instance)" : role.rawValue }
}
