import System

/// A guest-physical address.
public typealias GuestAddress = UInt64

/// An access outside guest RAM, or a range that wraps.
public struct GuestMemoryError: Error, CustomStringConvertible, Equatable {
    public let address: GuestAddress
    public let length: Int
    public var description: String { "guest range 0x\(String(address, radix: 16))+\(length) is outside guest RAM" }
}

/// Guest RAM: one contiguous range starting at guest-physical 0, backed by a shared memfd mapping.
/// Every access is bounds-checked; nothing here trusts an address.
public final class GuestMemory: @unchecked Sendable {
    private let mapping: MappedRegion
    public var size: Int { mapping.size }
    public var hostBase: UnsafeMutableRawPointer { mapping.base }

    /// Maps `size` bytes of the memfd `fd`.
    public init(fd: Int32, size: Int) throws(SystemError) {
        mapping = try MappedRegion(fd: fd, size: size)
    }

    /// Host pointer to `[address, address+length)`, or an error when any byte lies outside RAM.
    public func pointer(_ address: GuestAddress, length: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard length >= 0, address <= UInt64(size), UInt64(length) <= UInt64(size) - address else {
            throw GuestMemoryError(address: address, length: length)
        }
        return mapping.base + Int(address)
    }

    public func write(_ bytes: some Collection<UInt8>, at address: GuestAddress) throws(GuestMemoryError) {
        let p = try pointer(address, length: bytes.count)
        // One copy for contiguous bytes (kernel images are tens of MiB); element by element otherwise.
        let copied: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            if let base = buffer.baseAddress { p.copyMemory(from: base, byteCount: buffer.count) }
        }
        guard copied == nil else { return }
        var i = 0
        for b in bytes { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    public func read(_ address: GuestAddress, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let p = try pointer(address, length: count)
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    public func store<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws(GuestMemoryError) {
        try pointer(address, length: MemoryLayout<T>.size).storeBytes(of: value.littleEndian, as: T.self)
    }

    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: GuestAddress) throws(GuestMemoryError) -> T {
        T(littleEndian: try pointer(address, length: MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    public func fill(_ address: GuestAddress, count: Int, with byte: UInt8 = 0) throws(GuestMemoryError) {
        try pointer(address, length: count).initializeMemory(as: UInt8.self, repeating: byte, count: count)
    }
}

import Synchronization

extension GuestMemory {
    /// Atomically ORs `bits` into an aligned 64-bit guest word (page-table A/D updates race with other vCPUs).
    public func atomicOr(_ bits: UInt64, at address: GuestAddress) throws(GuestMemoryError) {
        guard address % 8 == 0 else { throw GuestMemoryError(address: address, length: 8) }
        _ = try pointer(address, length: 8).assumingMemoryBound(to: Atomic<UInt64>.self).pointee.bitwiseOr(bits, ordering: .relaxed)
    }

    /// The 32-bit form, for 32-bit paging structures.
    public func atomicOr(_ bits: UInt32, at address: GuestAddress) throws(GuestMemoryError) {
        guard address % 4 == 0 else { throw GuestMemoryError(address: address, length: 4) }
        _ = try pointer(address, length: 4).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.bitwiseOr(bits, ordering: .relaxed)
    }
}
