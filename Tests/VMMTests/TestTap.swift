import Foundation
import XCTest

/// A tap device a test creates (and removes) for a virtio-net device: up, with the host's address 10.200.N.1/24,
/// IPv6 off (no router solicitations in the guest's receive queue), and a permanent neighbour entry for the guest's
/// address and MAC so that the host can answer without the guest having to speak ARP. Needs root and /dev/net/tun;
/// a test without them is skipped loudly.
final class TestTap {
    let name: String
    let subnet: Int
    var hostAddress: String { "10.200.\(subnet).1" }
    var guestAddress: String { "10.200.\(subnet).2" }
    let guestMAC = "02:00:00:00:00:01"
    let hostMAC: String

    nonisolated(unsafe) private static var created = 0

    init(mode: String = "tap") throws {
        if geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0 {
            let message = "SKIPPED: creating a tap device needs root and /dev/net/tun"
            FileHandle.standardError.write(Data((message + "\n").utf8))
            throw XCTSkip(message)
        }
        Self.removeStaleTaps()
        Self.created += 1
        // The full pid (base 36: at most 15 characters in all), so that a leftover's owner can be told exactly.
        name = "vmmt\(String(getpid(), radix: 36))x\(Self.created)"
        let taken = Self.subnetsInUse()
        let first = 20 + Int(getpid() % 200 + Int32(Self.created)) % 230
        guard let free = (0..<230).map({ 20 + (first - 20 + $0) % 230 }).first(where: { !taken.contains($0) }) else {
            throw NSError(domain: "tap", code: 0, userInfo: [NSLocalizedDescriptionKey: "no free 10.200.N.0/24 for a test tap"])
        }
        subnet = free
        let name = self.name, subnet = self.subnet
        try Self.ip(["tuntap", "add", "dev", name, "mode", mode])
        if mode == "tap" {
            try Self.ip(["addr", "add", "10.200.\(subnet).1/24", "dev", name])
            try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
            try Self.ip(["link", "set", name, "up"])
            try Self.ip(["neigh", "replace", "10.200.\(subnet).2", "lladdr", guestMAC, "dev", name, "nud", "permanent"])
        }
        hostMAC = ((try? Harness.procFile("/sys/class/net/\(name)/address")) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    deinit { try? Self.ip(["link", "del", name]) }

    /// The N of every 10.200.N.0/24 some interface has an address in (a route to it would shadow ours).
    static func subnetsInUse() -> Set<Int> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var taken: Set<Int> = []
        var entry = list
        while let e = entry {
            if let address = e.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) {
                let ip = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                if ip >> 16 == 10 << 8 | 200 { taken.insert(Int(ip >> 8 & 0xff)) }
            }
            entry = e.pointee.ifa_next
        }
        return taken
    }

    /// Taps a killed test process left behind (its pid is in the name and no longer runs): a leftover's address
    /// and route would otherwise take traffic meant for a later test's tap.
    static func removeStaleTaps() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net") else { return }
        for name in names where name.hasPrefix("vmmt") {
            guard let x = name.lastIndex(of: "x"), let pid = Int32(name[name.index(name.startIndex, offsetBy: 4)..<x], radix: 36),
                  kill(pid, 0) != 0, errno == ESRCH else { continue }
            try? ip(["link", "del", name])
        }
    }

    static func ip(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip").resolvingSymlinksInPath()
        if !FileManager.default.fileExists(atPath: p.executableURL!.path) { p.executableURL = URL(fileURLWithPath: "/sbin/ip") }
        p.arguments = arguments
        let err = Pipe()
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw NSError(domain: "ip", code: Int(p.terminationStatus), userInfo: [NSLocalizedDescriptionKey:
                "ip \(arguments.joined(separator: " ")): \(String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))"])
        }
    }
}

/// A UDP peer on the host's side of a test tap: answers every datagram with `answer(request)` and records what it got.
final class UDPPeer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let lock = NSLock()
    private var _received: [Data] = []
    private var thread: Thread?
    var received: [Data] { lock.withLock { _received } }

    init(address: String, answer: @escaping @Sendable (Data) -> Data) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        self.fd = fd
        var sin = HostSockets.inetAddress(address)
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, bound == 0 else { throw NSError(domain: "udp", code: Int(errno)) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = UInt16(bigEndian: sin.sin_port)
        thread = Thread { [weak self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                var from = sockaddr_in()
                var fromLength = socklen_t(MemoryLayout<sockaddr_in>.size)
                let n = withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buffer, buffer.count, 0, $0, &fromLength) }
                }
                guard n > 0, let self else { return }
                let request = Data(buffer[0..<n])
                self.lock.withLock { self._received.append(request) }
                let reply = [UInt8](answer(request))
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, reply, reply.count, 0, $0, fromLength) }
                }
            }
        }
        thread?.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}

/// TCP bulk transfers with a guest on the host's side of a test tap: `send` serves one connection with `payload`
/// and closes; `receive` takes one connection's bytes (up to `expecting`) and closes. Each records how long its
/// transfer took from accept to the last byte.
final class TCPBulkPeer: @unchecked Sendable {
    let port: UInt16
    private let listener: Int32
    private let lock = NSLock()
    private var _received = Data()
    private var _seconds: Double?
    private let done = DispatchSemaphore(value: 0)

    enum Role { case send(Data), receive(expecting: Int) }

    init(address: String, role: Role) throws {
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = HostSockets.inetAddress(address)
        let fd = listener
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard fd >= 0, bound == 0, listen(fd, 1) == 0 else { throw NSError(domain: "tcp", code: Int(errno)) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = UInt16(bigEndian: sin.sin_port)
        Thread.detachNewThread { [self] in
            let c = accept(fd, nil, nil)
            guard c >= 0 else {
                done.signal()
                return
            }
            let start = Date()
            switch role {
            case .send(let payload):
                _ = HostSockets.writeAll(c, payload)
            case .receive(let expecting):
                var buffer = [UInt8](repeating: 0, count: 1 << 16)
                var got = Data()
                while got.count < expecting {
                    let n = recv(c, &buffer, buffer.count, 0)
                    if n <= 0 { break }
                    got.append(contentsOf: buffer[0..<n])
                }
                lock.withLock { _received = got }
            }
            let seconds = Date().timeIntervalSince(start)
            close(c)
            lock.withLock { _seconds = seconds }
            done.signal()
        }
    }

    /// Waits for the transfer; returns (bytes received, seconds), or nil on timeout.
    func wait(timeout: TimeInterval) -> (received: Data, seconds: Double)? {
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        return lock.withLock { _seconds.map { (_received, $0) } }
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

/// SHA-256 in hex, from the host's sha256sum (what the guest's busybox prints is compared with it).
enum SHA256Hex {
    static func of(_ data: Data) -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        guard (try? p.run()) != nil else { return "sha256sum failed" }
        let writer = Thread { input.fileHandleForWriting.write(data); try? input.fileHandleForWriting.close() }
        writer.start()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return String(text.prefix(64))
    }
}
