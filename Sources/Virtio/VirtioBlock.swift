/// The host side of a block device: the disk image. The device process implements it with pread/pwrite/fdatasync/
/// fallocate on the image fd; tests implement it in memory. Offsets and lengths are in bytes and already checked
/// against `capacityBytes` by `VirtioBlock`.
public protocol BlockStorage: AnyObject {
    /// The size of the disk. Only whole 512-byte sectors are visible to the guest.
    var capacityBytes: UInt64 { get }
    /// Whether the guest may only read.
    var isReadOnly: Bool { get }
    /// Fills `buffer` (a range of guest RAM) with the bytes at `offset`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockStorageError)
    /// Writes `buffer` (a range of guest RAM) at `offset`.
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockStorageError)
    /// Makes every completed write durable.
    func flush() throws(BlockStorageError)
    /// The guest no longer needs these bytes (their content becomes unspecified).
    func discard(offset: UInt64, length: UInt64) throws(BlockStorageError)
    /// Makes these bytes read as zero; `unmap` allows freeing them (e.g. punching a hole).
    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) throws(BlockStorageError)
}

/// A failed storage operation (the guest sees VIRTIO_BLK_S_IOERR). `code` is an errno where there is one.
public struct BlockStorageError: Error, Equatable, Sendable {
    public let code: Int32
    public init(code: Int32) { self.code = code }
}

/// Virtio-blk feature bits (5.2.3).
public enum VirtioBlockFeature {
    public static let sizeMax: UInt64 = 1 << 1
    public static let segMax: UInt64 = 1 << 2
    public static let geometry: UInt64 = 1 << 4
    public static let readOnly: UInt64 = 1 << 5
    public static let blockSize: UInt64 = 1 << 6
    public static let flush: UInt64 = 1 << 9
    public static let topology: UInt64 = 1 << 10
    public static let configWCE: UInt64 = 1 << 11
    public static let multiQueue: UInt64 = 1 << 12
    public static let discard: UInt64 = 1 << 13
    public static let writeZeroes: UInt64 = 1 << 14
}

/// Virtio-blk request types (5.2.6).
public enum VirtioBlockRequestType {
    public static let input: UInt32 = 0
    public static let output: UInt32 = 1
    public static let flush: UInt32 = 4
    public static let getID: UInt32 = 8
    public static let discard: UInt32 = 11
    public static let writeZeroes: UInt32 = 13
}

/// Virtio-blk status byte values (5.2.6).
public enum VirtioBlockStatus {
    public static let ok: UInt8 = 0
    public static let ioError: UInt8 = 1
    public static let unsupported: UInt8 = 2
}

/// How the block device is configured: everything the guest can see besides the storage.
public struct VirtioBlockConfiguration: Sendable, Equatable {
    /// Whether writes are cached on the host.
    public enum CacheType: Sendable, Equatable {
        /// Host-side caching with no durability promise: FLUSH is not offered (a FLUSH still succeeds).
        case unsafe
        /// Writes may sit in the host's cache until FLUSH, which is offered and reaches `BlockStorage.flush`.
        case writeback
    }

    public var cacheType: CacheType
    /// The drive id returned by GET_ID: at most 20 bytes (longer ids are cut), zero padded.
    public var driveID: [UInt8]
    /// QueueNumMax of the single request queue (a power of two).
    public var queueSize: UInt16
    /// The logical block size advertised with VIRTIO_BLK_F_BLK_SIZE (a power of two, at least 512).
    public var blockSize: UInt32
    /// Offer DISCARD (ignored on read-only storage).
    public var discard: Bool
    /// Offer WRITE_ZEROES (ignored on read-only storage).
    public var writeZeroes: Bool
    /// Limits of one DISCARD / WRITE_ZEROES request: sectors per segment and segments per request.
    public var maxDiscardSectors: UInt32
    public var maxDiscardSegments: UInt32
    public var maxWriteZeroesSectors: UInt32
    public var maxWriteZeroesSegments: UInt32
    /// Whether WRITE_ZEROES with the unmap flag may free the range.
    public var writeZeroesMayUnmap: Bool

    public init(cacheType: CacheType = .writeback, driveID: String = "", queueSize: UInt16 = 256, blockSize: UInt32 = 512,
                discard: Bool = true, writeZeroes: Bool = true, maxDiscardSectors: UInt32 = 0x3F_FFFF,
                maxDiscardSegments: UInt32 = 32, maxWriteZeroesSectors: UInt32 = 0x3F_FFFF,
                maxWriteZeroesSegments: UInt32 = 32, writeZeroesMayUnmap: Bool = true) {
        self.cacheType = cacheType
        self.driveID = Array(driveID.utf8.prefix(VirtioBlock.driveIDLength))
        self.queueSize = queueSize
        self.blockSize = blockSize
        self.discard = discard
        self.writeZeroes = writeZeroes
        self.maxDiscardSectors = maxDiscardSectors
        self.maxDiscardSegments = maxDiscardSegments
        self.maxWriteZeroesSectors = maxWriteZeroesSectors
        self.maxWriteZeroesSegments = maxWriteZeroesSegments
        self.writeZeroesMayUnmap = writeZeroesMayUnmap
    }
}

/// The virtio block device (device ID 2, virtio 1.2 section 5.2): one request queue served from a `BlockStorage`.
///
/// A request is a 16-byte header (type, reserved, sector) in device-readable memory, then the data, then one status
/// byte, the last byte of the last (device-writable) buffer. The header must start the first buffer and the status
/// end the last one; the data is whatever lies between (so a driver may merge the header or the status with data
/// buffers, as VERSION_1's any-layout rule allows). Data moves straight between guest RAM and the storage.
///
/// Errors: no status byte at all (the last buffer is not device-writable) -> the request cannot be answered and the
/// device needs a reset; a missing or short header, data in the wrong direction, a length that is not whole
/// sectors, a range beyond the capacity, a write to a read-only disk or a storage failure -> IOERR; an unknown type
/// -> UNSUPP.
public final class VirtioBlock: VirtioDeviceBackend {
    /// GET_ID answers this many bytes.
    public static let driveIDLength = 20
    public static let sectorSize: UInt64 = 512
    static let headerLength: UInt32 = 16
    static let discardSegmentLength = 16
    /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
    static let unmapFlag: UInt32 = 1

    public private(set) var storage: BlockStorage
    public let configuration: VirtioBlockConfiguration
    public let deviceFeatures: UInt64
    /// Bytes the guest can address: whole sectors only.
    private var usableBytes: UInt64

    public var deviceID: UInt32 { VirtioDeviceID.block }
    public var queueMaxSizes: [UInt16] { [configuration.queueSize] }

    public init(storage: BlockStorage, configuration: VirtioBlockConfiguration = VirtioBlockConfiguration()) {
        self.storage = storage
        self.configuration = configuration
        usableBytes = storage.capacityBytes / Self.sectorSize * Self.sectorSize
        var features = VirtioBlockFeature.segMax | VirtioBlockFeature.blockSize
        if configuration.cacheType == .writeback { features |= VirtioBlockFeature.flush }
        if storage.isReadOnly {
            features |= VirtioBlockFeature.readOnly
        } else {
            if configuration.discard { features |= VirtioBlockFeature.discard }
            if configuration.writeZeroes { features |= VirtioBlockFeature.writeZeroes }
        }
        deviceFeatures = features
    }

    /// Another backing file (the host's `PATCH /drives/{id}`), from the next request on: requests already handled
    /// used the old one. Its size is the new capacity; the caller tells the driver (a configuration change). False,
    /// and nothing changes, for a file whose read-only-ness differs from the features the driver accepted.
    public func replaceStorage(_ new: BlockStorage) -> Bool {
        guard new.isReadOnly == storage.isReadOnly else { return false }
        storage = new
        usableBytes = new.capacityBytes / Self.sectorSize * Self.sectorSize
        return true
    }

    // MARK: - Configuration space (5.2.4)

    /// `struct virtio_blk_config`, little-endian, 96 bytes (through the zoned characteristics, all zero here).
    public var configSpace: [UInt8] {
        var c = [UInt8](repeating: 0, count: 96)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { c[offset + i] = b } }
        }
        put(usableBytes / Self.sectorSize, at: 0) // capacity, in 512-byte sectors whatever blk_size says
        // size_max (4) stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered, a segment may be any size.
        // seg_max: leave room for the header and status descriptors in a chain of at most queue-size buffers.
        put(UInt32(max(1, Int(configuration.queueSize) - 2)), at: 12)
        put(configuration.blockSize, at: 20)
        c[32] = configuration.cacheType == .writeback ? 1 : 0 // writeback (informative without CONFIG_WCE)
        put(UInt16(1), at: 34) // num_queues
        put(configuration.maxDiscardSectors, at: 36)
        put(configuration.maxDiscardSegments, at: 40)
        put(UInt32(1), at: 44) // discard_sector_alignment, in sectors
        put(configuration.maxWriteZeroesSectors, at: 48)
        put(configuration.maxWriteZeroesSegments, at: 52)
        c[56] = configuration.writeZeroesMayUnmap ? 1 : 0
        return c
    }

    public func readConfig(offset: UInt64, size: Int) -> UInt64 {
        VirtioConfigSpace.read(configSpace, offset: offset, size: size)
    }

    /// Every field is read-only without VIRTIO_BLK_F_CONFIG_WCE (not offered).
    public func writeConfig(offset: UInt64, size: Int, value: UInt64) -> Bool { false }

    public func activate(features: UInt64) {}
    public func reset() {}

    // MARK: - Requests (5.2.6)

    public func handle(_ request: DescriptorChain, queue: Int, memory: GuestRAM) throws(VirtioRequestError) -> UInt32 {
        let buffers = request.buffers
        guard let last = buffers.last, last.isDeviceWritable, last.length >= 1 else {
            throw VirtioRequestError("block request \(request.head) has no status byte")
        }
        let statusAddress = last.gpa &+ UInt64(last.length) &- 1 // inside RAM: the queue validated it
        func complete(_ status: UInt8, wrote: UInt32 = 0) -> UInt32 {
            memory.store(status, at: statusAddress)
            return wrote &+ 1
        }
        // The header is the first 16 bytes of the first buffer, which cannot also be the status buffer (that one
        // is device-writable).
        guard let first = buffers.first, !first.isDeviceWritable, first.length >= Self.headerLength,
              let header = memory.copyOut(from: first.gpa, count: Int(Self.headerLength)) else {
            return complete(VirtioBlockStatus.ioError)
        }
        let type = Self.le(UInt32.self, header, 0)
        let sector = Self.le(UInt64.self, header, 8)

        // The data: the rest of the first buffer, the middle buffers, the last buffer but its final byte.
        var data: [DescriptorBuffer] = []
        data.reserveCapacity(buffers.count)
        for (i, b) in buffers.enumerated() {
            var gpa = b.gpa
            var length = b.length
            if i == 0 {
                gpa &+= UInt64(Self.headerLength)
                length -= Self.headerLength
            }
            if i == buffers.count - 1 { length -= 1 }
            if length > 0 { data.append(DescriptorBuffer(gpa: gpa, length: length, isDeviceWritable: b.isDeviceWritable)) }
        }
        let dataLength = data.reduce(UInt64(0)) { $0 + UInt64($1.length) }

        switch type {
        case VirtioBlockRequestType.input:
            // The used length is a u32 (and a guest can name one buffer many times): cap what one request moves.
            guard data.allSatisfy(\.isDeviceWritable), dataLength < UInt64(UInt32.max),
                  let offset = checkedRange(sector: sector, length: dataLength) else {
                return complete(VirtioBlockStatus.ioError)
            }
            var done: UInt64 = 0
            for segment in data {
                guard let guestBytes = memory.bytes(at: segment.gpa, count: Int(segment.length)) else {
                    return complete(VirtioBlockStatus.ioError, wrote: UInt32(done))
                }
                do {
                    try storage.read(into: guestBytes, at: offset + done)
                } catch {
                    // The failed segment may be partly written; count it, a driver must not trust any of it.
                    return complete(VirtioBlockStatus.ioError, wrote: UInt32(done + UInt64(segment.length)))
                }
                done += UInt64(segment.length)
            }
            return complete(VirtioBlockStatus.ok, wrote: UInt32(done))

        case VirtioBlockRequestType.output:
            guard !storage.isReadOnly, data.allSatisfy({ !$0.isDeviceWritable }), dataLength < UInt64(UInt32.max),
                  let offset = checkedRange(sector: sector, length: dataLength) else {
                return complete(VirtioBlockStatus.ioError)
            }
            var done: UInt64 = 0
            for segment in data {
                guard let guestBytes = memory.bytes(at: segment.gpa, count: Int(segment.length)) else {
                    return complete(VirtioBlockStatus.ioError)
                }
                do {
                    try storage.write(from: UnsafeRawBufferPointer(guestBytes), at: offset + done)
                } catch {
                    return complete(VirtioBlockStatus.ioError)
                }
                done += UInt64(segment.length)
            }
            return complete(VirtioBlockStatus.ok)

        case VirtioBlockRequestType.flush:
            // With .unsafe caching FLUSH is not offered and there is nothing to make durable.
            guard configuration.cacheType == .writeback else { return complete(VirtioBlockStatus.ok) }
            do {
                try storage.flush()
            } catch {
                return complete(VirtioBlockStatus.ioError)
            }
            return complete(VirtioBlockStatus.ok)

        case VirtioBlockRequestType.getID:
            guard data.allSatisfy(\.isDeviceWritable) else { return complete(VirtioBlockStatus.ioError) }
            var id = configuration.driveID
            id += [UInt8](repeating: 0, count: Self.driveIDLength - id.count)
            let wrote = memory.scatter(id, into: data)
            return complete(VirtioBlockStatus.ok, wrote: UInt32(wrote))

        case VirtioBlockRequestType.discard, VirtioBlockRequestType.writeZeroes:
            return complete(discardOrWriteZeroes(type: type, data: data, dataLength: dataLength, memory: memory))

        default:
            return complete(VirtioBlockStatus.unsupported)
        }
    }

    /// `sector * 512` as a byte offset when `[offset, offset + length)` lies within the disk's whole sectors and
    /// `length` is whole sectors; nil otherwise (including any overflow).
    private func checkedRange(sector: UInt64, length: UInt64) -> UInt64? {
        guard length % Self.sectorSize == 0 else { return nil }
        let (offset, overflow) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !overflow, offset <= usableBytes, length <= usableBytes - offset else { return nil }
        return offset
    }

    /// DISCARD and WRITE_ZEROES: the data is an array of 16-byte segments (le64 sector, le32 num_sectors,
    /// le32 flags). Every segment is validated before any is applied, so a bad request changes nothing.
    private func discardOrWriteZeroes(type: UInt32, data: [DescriptorBuffer], dataLength: UInt64,
                                      memory: GuestRAM) -> UInt8 {
        let isDiscard = type == VirtioBlockRequestType.discard
        let offered = isDiscard ? configuration.discard : configuration.writeZeroes
        guard offered else { return VirtioBlockStatus.unsupported }
        guard !storage.isReadOnly else { return VirtioBlockStatus.ioError }
        guard data.allSatisfy({ !$0.isDeviceWritable }), dataLength > 0,
              dataLength % UInt64(Self.discardSegmentLength) == 0 else { return VirtioBlockStatus.ioError }
        let count = dataLength / UInt64(Self.discardSegmentLength)
        let maxSegments = isDiscard ? configuration.maxDiscardSegments : configuration.maxWriteZeroesSegments
        let maxSectors = isDiscard ? configuration.maxDiscardSectors : configuration.maxWriteZeroesSectors
        guard count <= UInt64(maxSegments) else { return VirtioBlockStatus.unsupported }
        // Bounded by maxSegments * 16 bytes: one copy of the guest's list, then only the copy is used.
        guard let list = memory.gather(Int(dataLength), from: data) else { return VirtioBlockStatus.ioError }
        var ranges: [(offset: UInt64, length: UInt64, unmap: Bool)] = []
        for i in 0..<Int(count) {
            let base = i * Self.discardSegmentLength
            let sector = Self.le(UInt64.self, list, base)
            let sectors = Self.le(UInt32.self, list, base + 8)
            let flags = Self.le(UInt32.self, list, base + 12)
            // 5.2.6.2: unknown flags, or unmap on a discard, are unsupported.
            guard flags & ~Self.unmapFlag == 0, !(isDiscard && flags != 0) else { return VirtioBlockStatus.unsupported }
            guard sectors <= maxSectors,
                  let offset = checkedRange(sector: sector, length: UInt64(sectors) * Self.sectorSize) else {
                return VirtioBlockStatus.ioError
            }
            ranges.append((offset, UInt64(sectors) * Self.sectorSize, flags & Self.unmapFlag != 0))
        }
        do {
            for r in ranges where r.length > 0 {
                if isDiscard {
                    try storage.discard(offset: r.offset, length: r.length)
                } else {
                    try storage.writeZeroes(offset: r.offset, length: r.length,
                                            unmap: r.unmap && configuration.writeZeroesMayUnmap)
                }
            }
        } catch {
            return VirtioBlockStatus.ioError
        }
        return VirtioBlockStatus.ok
    }

    // MARK: - Helpers

    private static func le<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
