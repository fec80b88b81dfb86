import CLinux
import Channel
import Devices
import Glibc
import Machine
import Memory
import System
import Virtio

/// A virtio-mmio device process (one per device: each drive's virtio-blk, the virtio-rng): the pure transport and
/// backend from the Virtio module, its register window served over its channel, its queue notifications straight
/// from KVM (an eventfd per queue), guest RAM mapped for the virtqueues and buffers, and its interrupt line.
public enum VirtioProcess {
    public static func main(role: Role, specJSON: String) -> Int32 {
        HelperStartup.runDevice(VirtioSpec.self, json: specJSON, role: role) { spec in
            // Guest RAM and the backend are set up before the sandbox, which allows neither opening nor mapping files.
            let mapping = try GuestMemory(fd: spec.ramFD, size: spec.memSizeMiB << 20)
            let memory = MappedGuestRAM(base: mapping.hostBase, size: mapping.size)
            let backend: VirtioDeviceBackend
            var events: HostEvents?
            switch (role, spec.block) {
            case (.virtioBlock, let block?):
                let storage = try ImageFile(fd: block.imageFD, readOnly: block.readOnly)
                let disk = VirtioBlock(storage: storage, configuration: VirtioBlockConfiguration(
                    cacheType: block.writeback ? .writeback : .unsafe, driveID: block.driveID))
                backend = disk
                events = DriveUpdates(disk: disk, socket: block.updatesFD, replaced: block.replaced)
            case (.virtioNet, nil):
                guard let network = spec.network else { throw SystemError("role arguments: virtio-net without a tap", errno: EINVAL) }
                backend = VirtioNet(tap: TapFile(fd: network.tapFD),
                                    configuration: VirtioNetConfiguration(mac: network.mac, tapOffloads: network.tapOffloads))
                events = TapEvents(tapFD: network.tapFD)
            case (.virtioVsock, nil):
                guard let v = spec.vsock else { throw SystemError("role arguments: virtio-vsock without its sockets", errno: EINVAL) }
                let sockets = VsockSockets(listenerFD: v.listenerFD, brokerFD: v.brokerFD)
                let vsock = VirtioVsock(guestCID: v.guestCID, host: sockets)
                sockets.device = vsock
                backend = vsock
                events = sockets
            case (.virtioRNG, nil):
                backend = VirtioEntropy(source: KernelRandom())
            default:
                throw SystemError("role arguments: \(role) with\(spec.block == nil ? "out" : "") a disk", errno: EINVAL)
            }
            guard backend.queueMaxSizes.count == spec.queueNotifyFDs.count else {
                throw SystemError("role arguments: \(backend.queueMaxSizes.count) queues, \(spec.queueNotifyFDs.count) notification eventfds", errno: EINVAL)
            }
            try HelperSandbox.enter(spec.sandbox, role: role, controlFD: spec.controlFD, processes: 0)
            // A standby looks at nothing the guest controls (channel, queues in guest RAM) before it takes over.
            if let takeover = spec.takeoverFD { try HelperStartup.awaitTakeover(takeover) }
            Log.debug("sandboxed; serving")
            try withExtendedLifetime(mapping) { try serve(spec, backend: backend, memory: memory, events: events) }
        }
    }

    /// Requests served per queue before the process looks at its channel again, commits and counts its progress:
    /// bounds how long a register access waits behind queue work, and how long a busy, healthy device shows no
    /// progress to the supervisor's hang watch.
    static let queueBudget = 32

    static func serve(_ spec: VirtioSpec, backend: VirtioDeviceBackend, memory: GuestRAM, events: HostEvents?) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        let policy = spec.waiting.policy(census: try spec.waiting.attachCensus(), stepsAside: true)
        var server = DeviceServer(region: region, deviceDoorbell: spec.channel.deviceDoorbellFD,
                                  responseDoorbells: spec.channel.responseDoorbellFDs, policy: policy)
        let line = try ChannelLine(spec.line, policy: policy)
        // The line is said once it is known whether a predecessor left a level to restore.
        let transport = VirtioMMIOTransport(backend: backend, memory: memory, interrupt: line, settingLine: false)
        (events as? DriveUpdates)?.transport = transport
        let device = RestartableVirtio(transport)
        // A process started in place of a dead one resumes from its predecessor's last commit, then takes the
        // completions the predecessor published after that commit as done (see RestartableVirtio).
        if let saved = server.makeRestartable(device) {
            do {
                try device.restore(saved)
                let adopted = transport.adoptPublishedCompletions()
                events?.tookOver()
                Log.info("resumed from the state the previous process committed (\(adopted) completion\(adopted == 1 ? "" : "s") it published after that)")
            } catch {
                // Nothing to go on: the driver must start over. A device after reset that says DEVICE_NEEDS_RESET
                // is what tells it so.
                Log.warning("the previous process's state is unusable (\(error)); the device needs a reset")
                transport.markNeedsReset(reason: "the state of the device's previous process was unusable")
                transport.sayInterruptLevel()
            }
        } else {
            transport.sayInterruptLevel()
        }
        server.announceServing()
        server.settling = StartupCode.settleAction()
        let window = spec.windowBase..<(spec.windowBase + MachineLayout.virtioWindow)
        var counter: UInt64 = 0
        var reported: String?
        var failures = 0
        var notified = [Bool](repeating: false, count: spec.queueNotifyFDs.count)
        while true {
            // Busy before a notification is taken from its eventfd: from then on, until the work is done, only this
            // flag tells the supervisor that something waits on this process.
            region.deviceBusy = true
            // Notifications are taken before the register accesses are drained, and served after them: KVM signals
            // the eventfd only once the guest wrote QueueNotify, after the vCPU had posted its earlier writes
            // (QueueReady, DRIVER_OK), so every write a taken notification depends on is in the ring by then. Taken
            // after the drain, a notification could overtake a write posted in between and find its queue not ready.
            for (queue, fd) in spec.queueNotifyFDs.enumerated() where Glibc.read(fd, &counter, 8) == 8 {
                notified[queue] = true
            }
            repeat {
                server.commit()
                while let (lane, m) = server.next(malformed: { Log.warning("dropping a malformed request: \($0)") }) {
                    switch m.operation {
                    case .mmioRead:
                        let value = window.contains(m.address) ? transport.read(offset: m.address - spec.windowBase, size: Int(m.size)) : 0
                        try server.respond(lane: lane, to: m, data: value & m.widthMask)
                    case .mmioWrite:
                        guard window.contains(m.address) else { break }
                        let offset = m.address - spec.windowBase
                        if offset == VirtioMMIORegister.queueNotify && m.size == 4 {
                            // Served below with the eventfds' notifications, after a commit: queue work never
                            // shares a commit with register writes (see RestartableVirtio).
                            if m.data < UInt64(notified.count) { notified[Int(m.data)] = true }
                        } else {
                            transport.write(offset: offset, size: Int(m.size), value: m.data)
                        }
                    case .portRead:
                        try server.respond(lane: lane, to: m, data: m.widthMask)
                    case .sync:
                        try server.respond(lane: lane, to: m, data: 0)
                    default:
                        break  // no ports, no device operations of its own
                    }
                }
            } while server.uncommitted >= server.batchLimit
            if server.uncommitted > 0 { server.commit() }
            // Queue work: its effects (used entries, used->idx, the interrupt) are the guest's to see at once, so
            // its new ring positions are committed right after it; a successor adopts what a death in between
            // left published (VirtioMMIOTransport.adoptPublishedCompletions).
            if let delay = spec.testQueueDelayMicroseconds, notified.contains(true) { usleep(UInt32(clamping: delay)) }
            for queue in events?.alwaysServe ?? [] { notified[queue] = true }
            let before = transport.state.queues.map(\.usedIndex)
            for queue in notified.indices where notified[queue] {
                notified[queue] = false
                transport.queueNotified(queue, budget: Self.queueBudget)
            }
            // Queues that stopped at their budget go on after the ring has been looked at again, without sleeping.
            let more = transport.runPendingQueues(budget: Self.queueBudget)
            let completed = zip(before, transport.state.queues).reduce(UInt64(0)) { $0 + UInt64($1.1.usedIndex &- $1.0) }
            if completed > 0 || transport.state.failure != reported {
                if let delay = spec.testCommitDelayMicroseconds, completed > 0 { usleep(UInt32(clamping: delay)) }
                server.commit()
                region.addDeviceProgress(completed)
            }
            if !more { region.deviceBusy = false }
            // Why the device stopped serving, once per failure (the guest resets it to go on); a guest that keeps
            // breaking its queues gets a bounded number of lines, at Info level: this is the guest's doing.
            if transport.state.failure != reported {
                reported = transport.state.failure
                if let why = reported, failures < 20 {
                    failures += 1
                    Log.info("device needs a reset: \(why)\(failures == 20 ? " (further failures are not logged)" : "")")
                }
            }
            if more { continue }
            // Besides the channel and the notifications: what the host side waits on (a tap, sockets).
            let watched = events?.descriptors(transport) ?? []
            let ready = try server.wait(extra: spec.queueNotifyFDs + watched, timeoutMs: events?.retryMs ?? -1)
            if let events {
                let readyHost = watched.indices.filter { !ready[spec.queueNotifyFDs.count + $0].isEmpty }.map { watched[$0] }
                for queue in events.handle(ready: readyHost) { notified[queue] = true }
            }
        }
    }
}

/// The virtio device's state as its process commits it with the channel's positions (`DeviceServer.commit`), so a
/// process started in place of a dead one resumes where the last commit left off.
///
/// Exactly once, from the guest's point of view: what a virtio device does to its virtqueues (used entries,
/// used->idx, the interrupt) is seen by the guest at once, outside the channel, so a commit cannot cover it. The
/// process keeps register writes and queue work in separate commits (it commits before queue work, and serves a
/// QueueNotify that came over the channel as queue work), so the queue work since the last commit always ran on the
/// committed registers; its ring positions are committed right after it. A successor restores the last commit, then
/// adopts every completion its predecessor published in the used ring after it (the queues are served in order and
/// synchronously, so those are exactly the next requests of the avail ring), and serves again a request that was
/// taken but not published (the driver cannot have reused its buffers; a block write of the same buffer is
/// idempotent). Register writes the predecessor handled but did not commit are handled again from the ring: no
/// queue work followed them, and the only guest RAM they touch is used->idx = 0 at DRIVER_OK, written again alike.
final class RestartableVirtio: RestartableDevice {
    let transport: VirtioMMIOTransport
    /// A format tag, so that a successor never restores a different build's layout of this state.
    private static let snapshotVersion: UInt8 = 1

    init(_ transport: VirtioMMIOTransport) { self.transport = transport }

    func snapshot() -> [UInt8] {
        var w = SnapshotWriter()
        w.u8(Self.snapshotVersion)
        transport.save(to: &w)
        return w.bytes
    }

    func didCommit() {}

    func restore(_ bytes: [UInt8]) throws(SnapshotError) {
        var r = SnapshotReader(bytes)
        guard try r.u8() == Self.snapshotVersion else { throw .invalid("virtio state of another format") }
        try transport.restore(from: &r)
        try r.finish()
    }
}

/// A disk image as virtio-blk reads it: the descriptor the supervisor opened and locked, read and written in place
/// with pread/pwrite, straight from and into guest buffers.
final class ImageFile: BlockStorage {
    private let fd: Int32
    let capacityBytes: UInt64
    let isReadOnly: Bool

    init(fd: Int32, readOnly: Bool) throws(SystemError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError("fstat(image)", errno: errno) }
        self.fd = fd
        capacityBytes = UInt64(max(0, st.st_size))
        isReadOnly = readOnly
    }

    /// A replaced file is closed (and its lock, shared with the supervisor's copy, goes when that one closes too).
    deinit { Glibc.close(fd) }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockStorageError(code: errno)
            }
            if n == 0 {  // the image shrank under us: what is gone reads as zeros
                if let base = buffer.baseAddress { (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done) }
                return
            }
            done += n
        }
    }

    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockStorageError) {
        guard !isReadOnly else { throw BlockStorageError(code: EROFS) }
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress.map { $0 + done }, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockStorageError(code: errno)
            }
            done += n
        }
    }

    func flush() throws(BlockStorageError) {
        while fdatasync(fd) != 0 {
            if errno != EINTR { throw BlockStorageError(code: errno) }
        }
    }

    /// Discarding is advice: where the file system cannot punch holes, the bytes simply stay.
    func discard(offset: UInt64, length: UInt64) throws(BlockStorageError) {
        guard !isReadOnly else { throw BlockStorageError(code: EROFS) }
        if vmm_fallocate(fd, Self.punchHole | Self.keepSize, Int64(offset), Int64(length)) != 0, errno != EOPNOTSUPP {
            throw BlockStorageError(code: errno)
        }
    }

    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) throws(BlockStorageError) {
        guard !isReadOnly else { throw BlockStorageError(code: EROFS) }
        if vmm_fallocate(fd, (unmap ? Self.punchHole : Self.zeroRange) | Self.keepSize, Int64(offset), Int64(length)) == 0 { return }
        guard errno == EOPNOTSUPP else { throw BlockStorageError(code: errno) }
        // No hole punching or zeroing here: write zeros.
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at = offset
        while at < offset + length {
            let n = Int(min(UInt64(zeros.count), offset + length - at))
            try write(from: UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: at)
            at += UInt64(n)
        }
    }

    // linux/falloc.h
    static let keepSize: Int32 = 0x01, punchHole: Int32 = 0x02, zeroRange: Int32 = 0x10
}

/// What a virtio device process waits on besides its channel and queue notifications, and what becomes of it: the
/// tap of a virtio-net device, the sockets of the vsock device.
protocol HostEvents: AnyObject {
    /// The descriptors to watch for reading now.
    func descriptors(_ transport: VirtioMMIOTransport) -> [Int32]
    /// Handles the ready ones (also called with none after a timeout); returns the queues to serve.
    func handle(ready: [Int32]) -> [Int]
    /// How soon to look again without an event (-1: not at all): work waits on the host side.
    var retryMs: Int32 { get }
    /// This process took over from a dead one.
    func tookOver()
    /// Queues served on every pass: the host side's state may have changed with any queue's work.
    var alwaysServe: [Int] { get }
}

/// virtio-blk: new backing files from the supervisor (`PATCH /drives/{id}` on a running VM), one SCM_RIGHTS message
/// each. The process is single-threaded, so a swap falls between two requests: those handled before it used the old
/// file, the rest use the new one. The guest is told through a configuration change (it re-reads the capacity).
final class DriveUpdates: HostEvents {
    let disk: VirtioBlock
    let socket: Int32
    /// The file was replaced before this process started: its predecessor may have died before telling the guest.
    let replaced: Bool
    weak var transport: VirtioMMIOTransport?

    init(disk: VirtioBlock, socket: Int32, replaced: Bool) {
        self.disk = disk
        self.socket = socket
        self.replaced = replaced
    }

    func descriptors(_ transport: VirtioMMIOTransport) -> [Int32] { [socket] }

    func handle(ready: [Int32]) -> [Int] {
        guard !ready.isEmpty else { return [] }
        var byte: UInt8 = 0
        var fd: Int32 = -1, count: Int32 = 0
        while vmm_receive_with_fds(socket, &byte, 1, &fd, 1, &count, 1) > 0 {
            guard count == 1 else { continue }
            do {
                let image = try ImageFile(fd: fd, readOnly: disk.storage.isReadOnly)
                guard disk.replaceStorage(image) else { continue }
                Log.info("backing file replaced: \(image.capacityBytes) bytes")
                transport?.configChanged()
            } catch {
                Log.warning("a new backing file was unusable (\(error)); the old one stays")
                Glibc.close(fd)
            }
            fd = -1
        }
        return []
    }

    var retryMs: Int32 { -1 }
    func tookOver() { if replaced { transport?.configChanged() } }
    var alwaysServe: [Int] { [] }
}

/// virtio-net: the tap is watched only while the receive queue can take a frame; otherwise what arrives waits in
/// the tap's own bounded queue.
final class TapEvents: HostEvents {
    let tapFD: Int32
    init(tapFD: Int32) { self.tapFD = tapFD }
    func descriptors(_ transport: VirtioMMIOTransport) -> [Int32] {
        transport.wantsDeviceSource(queue: VirtioNet.receiveQueue) ? [tapFD] : []
    }
    func handle(ready: [Int32]) -> [Int] { ready.isEmpty ? [] : [VirtioNet.receiveQueue] }
    var retryMs: Int32 { -1 }
    func tookOver() {}
    var alwaysServe: [Int] { [] }
}

/// The vsock device's host side over descriptors: the listening socket the supervisor made (accepted here), the
/// broker that connects for it (it has no socket() or connect()), and one non-blocking Unix socket per connection.
final class VsockSockets: VsockHost, HostEvents {
    let listenerFD: Int32
    let brokerFD: Int32
    weak var device: VirtioVsock?
    private var sockets: [Int: Int32] = [:]

    init(listenerFD: Int32, brokerFD: Int32) {
        self.listenerFD = listenerFD
        self.brokerFD = brokerFD
    }

    // MARK: VsockHost

    func read(_ id: Int, into buffer: UnsafeMutableRawBufferPointer) -> VsockHostIO {
        guard let fd = sockets[id] else { return .closed }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return .bytes(n) }
            if n == 0 { return .closed }
            if errno == EINTR { continue }
            return errno == EAGAIN ? .wouldBlock : .closed
        }
    }

    func write(_ id: Int, from buffer: UnsafeRawBufferPointer) -> VsockHostIO {
        guard let fd = sockets[id] else { return .closed }
        while true {
            let n = Glibc.write(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return .bytes(n) }
            if n < 0 && errno == EINTR { continue }
            return n < 0 && errno == EAGAIN ? .wouldBlock : .closed
        }
    }

    func shutdownWrite(_ id: Int) {
        if let fd = sockets[id] { Glibc.shutdown(fd, Int32(SHUT_WR)) }
    }

    func close(_ id: Int) {
        if let fd = sockets.removeValue(forKey: id) { Glibc.close(fd) }
    }

    func connect(_ id: Int, port: UInt32) {
        var request: [UInt32] = [UInt32(truncatingIfNeeded: id).littleEndian, port.littleEndian]
        let n = request.withUnsafeMutableBytes { Glibc.write(brokerFD, $0.baseAddress, 8) }
        if n != 8 { device?.hostConnectFinished(id, connected: false) }
    }

    // MARK: HostEvents

    func descriptors(_ transport: VirtioMMIOTransport) -> [Int32] {
        guard let device else { return [] }
        let receiving = transport.wantsDeviceSource(queue: VirtioVsock.receiveQueue)
        var fds = [brokerFD]
        if device.canAcceptHostConnection { fds.append(listenerFD) }
        for (id, read) in device.watchedConnections where read && (receiving || device.isReadingConnectLine(id)) {
            if let fd = sockets[id] { fds.append(fd) }
        }
        return fds
    }

    func handle(ready: [Int32]) -> [Int] {
        guard let device else { return [] }
        if ready.contains(listenerFD) {
            while device.canAcceptHostConnection {
                let fd = vmm_accept_nonblocking(listenerFD)
                guard fd >= 0 else { break }
                let id = device.reserveConnectionID()
                sockets[id] = fd
                device.hostConnectionAccepted(id)
            }
        }
        if ready.contains(brokerFD) {
            var reply: [UInt32] = [0, 0]
            var fd: Int32 = -1, count: Int32 = 0
            while reply.withUnsafeMutableBytes({ vmm_receive_with_fds(brokerFD, $0.baseAddress, 8, &fd, 1, &count, 1) }) == 8 {
                let id = Int(UInt32(littleEndian: reply[0]))
                if count == 1 { sockets[id] = fd }
                device.hostConnectFinished(id, connected: count == 1)
            }
        }
        for (id, fd) in sockets where ready.contains(fd) { device.hostReadable(id) }
        device.flushToHost()
        // Whatever happened may have given the guest something to receive.
        return [VirtioVsock.receiveQueue, VirtioVsock.eventQueue]
    }

    /// The guest's bytes that a host socket could not take yet are tried again soon (no POLLOUT watch).
    var retryMs: Int32 { device?.hasBytesForHost == true ? 5 : -1 }

    func tookOver() { device?.announceTransportReset() }
    /// A packet from the guest can leave an answer to send (RESPONSE, RST, a credit update).
    var alwaysServe: [Int] { [VirtioVsock.receiveQueue, VirtioVsock.eventQueue] }
}

/// A tap as virtio-net's host side: the descriptor the supervisor opened (vnet header, non-blocking); frames are
/// written gathered straight from guest RAM and read one per read(2).
final class TapFile: NetworkTap {
    private let fd: Int32
    init(fd: Int32) { self.fd = fd }

    func send(_ parts: [UnsafeRawBufferPointer]) -> Bool {
        let vectors = parts.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        while true {
            let n = vectors.withUnsafeBufferPointer { writev(fd, $0.baseAddress, Int32($0.count)) }
            if n >= 0 { return true }
            if errno == EINTR { continue }
            // EINVAL: a header or frame the kernel refuses; EIO: the interface is down; EAGAIN: its queue is full.
            return false
        }
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return n }
            if n < 0 && errno == EINTR { continue }
            return nil  // EAGAIN: nothing waits (a zero-length read cannot happen on a tap)
        }
    }

    func setReceiveOffloads(_ flags: UInt32) {
        if vmm_tap_set_offload(fd, flags) != 0 {
            Log.warning("TUNSETOFFLOAD 0x\(String(flags, radix: 16)): \(String(cString: strerror(errno)))")
        }
    }
}

/// The kernel's random number generator, through getrandom(2).
final class KernelRandom: EntropySource {
    func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        while done < buffer.count, let base = buffer.baseAddress {
            let n = vmm_getrandom(base + done, buffer.count - done, 0)
            if n < 0 {
                if errno == EINTR { continue }
                break  // only EFAULT/EINVAL, which a valid buffer cannot cause
            }
            done += n
        }
        return done
    }
}
