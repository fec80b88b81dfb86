import CLinux
import Config
import Glibc
import System
import Virtio

/// A network interface's tap, opened by the supervisor for its virtio-net process (which can open nothing): an
/// existing tap device, attached with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and the 12-byte virtio 1.x header, its
/// receive offloads probed.
final class TapDevice {
    let file: FileDescriptor.Box
    let interface: VMConfig.NetworkInterface
    /// The receive offloads (`TapOffload` bits) the tap accepts: what the device may offer the guest.
    let offloads: UInt32

    /// Opens the tap of `interface`. Errors name the config field: the interface must exist already (vmm does not
    /// create one, so a typo cannot make a VM with a NIC nobody routes) and be a tap nobody else has open.
    init(_ interface: VMConfig.NetworkInterface) throws(Supervisor.HostSetupError) {
        let field = "network-interfaces[\(interface.configIndex)].host_dev_name"
        let name = interface.hostDevName
        guard if_nametoindex(name) != 0 else {
            throw Supervisor.HostSetupError(description: "\(field): there is no network interface \"\(name)\" (create the tap first, e.g. ip tuntap add dev \(name) mode tap)")
        }
        var step: UnsafePointer<CChar>?
        let fd = vmm_tap_open(name, &step)
        guard fd >= 0 else {
            let e = -fd
            let what = step.map { String(cString: $0) } ?? "open"
            let why: String
            switch e {
            case EBUSY: why = "another VM or program has the tap open"
            case EINVAL: why = "\(what): not a tap device (a tun, or not a tun/tap interface at all)"
            case EPERM, EACCES: why = "\(what): not allowed (the tap belongs to another user, or vmm lacks CAP_NET_ADMIN)"
            default: why = "\(what): \(String(cString: strerror(e)))"
            }
            throw Supervisor.HostSetupError(description: "\(field): \(name): \(why)")
        }
        file = FileDescriptor.Box(FileDescriptor(owning: fd))
        self.interface = interface
        // TSO needs checksum offload; a tap that refuses all of them still moves fully checksummed frames.
        var supported: UInt32 = 0
        for flags in [TapOffload.checksum | TapOffload.tso4 | TapOffload.tso6, TapOffload.checksum] where vmm_tap_set_offload(fd, flags) == 0 {
            supported = flags
            break
        }
        offloads = supported
        // Nothing until the guest's driver says what it accepts (VirtioNet.activate).
        _ = vmm_tap_set_offload(fd, 0)
    }

    func spec(_ fds: inout FDList) -> NetworkDeviceSpec {
        NetworkDeviceSpec(tapFD: fds.add(file.raw, owner: file), ifaceID: interface.ifaceID, mac: interface.guestMAC,
                          tapOffloads: offloads)
    }
}
