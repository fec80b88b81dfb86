import CLinux
import Config
import Glibc
import System

/// The host side of the vsock device that its process cannot make itself: the listening socket at `uds_path`
/// (made here, with the invoker's umask; a path that exists is refused), and a broker for the guest's connections
/// to `<uds_path>_<port>`. The device process's sandbox has no `socket` or `connect`: it asks over a SOCK_SEQPACKET
/// pair (8 bytes: connection number, port) and the broker thread connects and hands back the connected socket
/// (SCM_RIGHTS), non-blocking, or an errno. Only paths of that one form can be reached, whatever the guest asks.
final class VsockHostSide {
    let vsock: VMConfig.Vsock
    let listener: FileDescriptor.Box
    /// The device's end of the broker pair (every process of the device gets it), and the broker's.
    let deviceEnd: FileDescriptor.Box
    private let brokerEnd: Int32

    init(_ vsock: VMConfig.Vsock) throws(Supervisor.HostSetupError) {
        self.vsock = vsock
        let path = vsock.udsPath
        let fd = vmm_unix_listen(path, 128)
        guard fd >= 0 else {
            let why = switch -fd {
            case EADDRINUSE: "exists already (vmm makes the socket; remove the old one or choose another path)"
            case ENOENT: "its directory does not exist"
            default: String(cString: strerror(-fd))
            }
            throw Supervisor.HostSetupError(description: "vsock.uds_path: \(path): \(why)")
        }
        listener = FileDescriptor.Box(FileDescriptor(owning: fd))
        var pair: [Int32] = [-1, -1]
        guard vmm_seqpacket_pair(&pair) == 0 else {
            unlink(path)
            throw Supervisor.HostSetupError(description: "vsock broker: socketpair: \(String(cString: strerror(errno)))")
        }
        deviceEnd = FileDescriptor.Box(FileDescriptor(owning: pair[0]))
        brokerEnd = pair[1]
        let broker = brokerEnd
        do { _ = try OSThread.start(name: "vsock-broker", stackSize: 256 << 10) { Self.serve(broker, udsPath: path) } } catch {
            unlink(path)
            throw Supervisor.HostSetupError(description: "vsock broker: \(error)")
        }
    }

    /// Removes the socket file vmm made (at the VM's end).
    func removeSocket() { unlink(vsock.udsPath) }

    func spec(_ fds: inout FDList) -> VsockDeviceSpec {
        VsockDeviceSpec(listenerFD: fds.add(listener.raw, owner: listener), brokerFD: fds.add(deviceEnd.raw, owner: deviceEnd),
                        guestCID: UInt64(vsock.guestCID))
    }

    /// Answers each request with a connected socket or an errno, for the VM's life.
    private static func serve(_ broker: Int32, udsPath: String) {
        var request = [UInt32](repeating: 0, count: 2)
        while true {
            let n = request.withUnsafeMutableBytes { Glibc.read(broker, $0.baseAddress, 8) }
            if n < 0 && errno == EINTR { continue }
            guard n == 8 else { return }
            let (id, port) = (UInt32(littleEndian: request[0]), UInt32(littleEndian: request[1]))
            let fd = vmm_unix_connect("\(udsPath)_\(port)", 1)
            var reply: [UInt32] = [id.littleEndian, UInt32(bitPattern: fd >= 0 ? 0 : -fd).littleEndian]
            _ = reply.withUnsafeMutableBytes { vmm_send_with_fds(broker, $0.baseAddress, 8, [fd], fd >= 0 ? 1 : 0) }
            if fd >= 0 { close(fd) }  // the device has its own copy now
        }
    }
}
