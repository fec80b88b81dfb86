import BenchKit
import Foundation
import Glibc

/// The host side of the virtio-blk rows: the test image and the same reads done with pread on the host.
enum BlockBench {
    struct Failed: Error, CustomStringConvertible { let description: String }

    /// Writes an image of `mib` MiB in which every 4 KiB block starts with its block number (UInt32, little
    /// endian; the guest checks it) followed by non-zero data, then reads it once, so that every reader after
    /// that (the host loop, vmm's device process, QEMU) finds it in the page cache.
    static func makeImage(at path: String, mib: Int) throws {
        let size = mib << 20
        var data = Data(count: size)
        data.withUnsafeMutableBytes { raw in
            var template = [UInt8](repeating: 0, count: 4096)
            for i in 4..<4096 { template[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) | 1 }
            for block in 0..<(size / 4096) {
                let at = raw.baseAddress! + block * 4096
                template.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
                at.storeBytes(of: UInt32(block).littleEndian, as: UInt32.self)
            }
        }
        try data.write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw Failed(description: "open \(path): errno \(errno)") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset = 0
        while offset < size {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard n > 0 else { throw Failed(description: "read \(path): errno \(errno)") }
            offset += n
        }
    }

    /// `count` reads of `pattern` with pread on one thread (the device process also serves its queue with one
    /// synchronous pread per request), each checked as the guest checks it. Returns requests per second.
    static func hostPread(path: String, pattern: BlockPattern, count: Int) throws -> Double {
        var pattern = pattern
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw Failed(description: "open \(path): errno \(errno)") }
        defer { close(fd) }
        let length = pattern.requestBytes
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
        defer { buffer.deallocate() }
        var errors = 0
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<count {
            let sector = pattern.nextSector()
            let n = pread(fd, buffer, length, off_t(sector * 512))
            if n != length || UInt32(littleEndian: buffer.load(as: UInt32.self)) != UInt32(truncatingIfNeeded: sector >> 3) { errors += 1 }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        guard errors == 0 else { throw Failed(description: "host pread: \(errors) of \(count) reads failed or read the wrong block") }
        return Double(count) / seconds
    }
}
