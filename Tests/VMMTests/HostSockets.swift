import Foundation
import XCTest

/// The host side of the network and vsock tests: socket plumbing, and Firecracker's vsock protocol over Unix
/// sockets (what a host agent does).
enum HostSockets {
    /// FNV-1a 64, as tools/linux/streamtest.c prints it.
    static func fnv64(_ bytes: Data) -> String {
        var h: UInt64 = 14_695_981_039_346_656_037
        for b in bytes { h = (h ^ UInt64(b)) &* 1_099_511_628_211 }
        return String(format: "%016llx", h)
    }

    /// What `streamtest vsock-connect CID PORT n` sends.
    static func pattern(_ n: Int) -> Data { Data((0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ n) }) }

    static func inetAddress(_ address: String, port: UInt16 = 0) -> sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &sin.sin_addr)
        return sin
    }

    static func unixAddress(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        return addr
    }

    static func unixSocket(connectingTo path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = unixAddress(path)
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if ok != 0 { close(fd); return nil }
        return fd
    }

    static func unixListener(at path: String) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = unixAddress(path)
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard ok == 0, listen(fd, 16) == 0 else { close(fd); return nil }
        return fd
    }

    static func readLine(_ fd: Int32) -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    static func readAll(_ fd: Int32) -> Data {
        var out = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { return out }
            out.append(contentsOf: buffer[0..<n])
        }
    }

    static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
                if n <= 0 { return false }
                done += n
            }
            return true
        }
    }

    /// One host-initiated connection to a guest listener: CONNECT, the OK line, `payload`, end of sending, the
    /// guest's answer line. Returns (OK line, answer, seconds from connect to OK, seconds for the transfer).
    static func hostToGuest(udsPath: String, port: UInt32, payload: Data) -> (ok: String, answer: String, setup: Double, transfer: Double) {
        let start = Date()
        guard let fd = unixSocket(connectingTo: udsPath) else { return ("no connection to \(udsPath)", "", 0, 0) }
        defer { close(fd) }
        // A connection the device never answers fails the test after 5 minutes instead of hanging it (reads and
        // writes time out; a 256 KiB exchange takes a few seconds here).
        var limit = timeval(tv_sec: 300, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        _ = writeAll(fd, Data("CONNECT \(port)\n".utf8))
        let ok = readLine(fd)
        let connected = Date()
        guard ok.hasPrefix("OK ") else { return (ok, "", connected.timeIntervalSince(start), 0) }
        _ = writeAll(fd, payload)
        shutdown(fd, Int32(SHUT_WR))
        let answer = String(decoding: readAll(fd), as: UTF8.self).trimmingCharacters(in: .newlines)
        return (ok, answer, connected.timeIntervalSince(start), Date().timeIntervalSince(connected))
    }
}

/// A host listener at `<uds_path>_<port>` for the guest's connections: each is read to end-of-file and answered with
/// its FNV-1a 64 and length, as the guest's own listener answers.
final class VsockHostListener: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var _received: [Data] = []
    private var _seconds: [Double] = []
    var received: [Data] { lock.withLock { _received } }
    var seconds: [Double] { lock.withLock { _seconds } }

    init(path: String, connections: Int) throws {
        self.path = path
        unlink(path)
        guard let fd = HostSockets.unixListener(at: path) else { throw NSError(domain: "unix", code: Int(errno)) }
        self.fd = fd
        Thread.detachNewThread { [self] in
            for _ in 0..<connections {
                let c = accept(fd, nil, nil)
                guard c >= 0 else { return }
                Thread.detachNewThread { [self] in
                    let start = Date()
                    let data = HostSockets.readAll(c)
                    let elapsed = Date().timeIntervalSince(start)
                    _ = HostSockets.writeAll(c, Data("sum=\(HostSockets.fnv64(data)) bytes=\(data.count)\n".utf8))
                    close(c)
                    lock.withLock {
                        _received.append(data)
                        _seconds.append(elapsed)
                    }
                }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }
}

/// A value shared between threads, behind a lock.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: Value
    init(_ value: Value) { _value = value }
    var value: Value { lock.withLock { _value } }
    func update(_ change: (inout Value) -> Void) { lock.withLock { change(&_value) } }
}
