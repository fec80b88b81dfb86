import TestSupport
@testable import Channel
import XCTest

final class CommittedStateTests: XCTestCase {
    /// A zeroed, page-aligned buffer the size of a channel's default state area.
    private func withBuffer(size: Int = 4096, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        try body(buffer)
    }

    private func generation(_ buffer: UnsafeMutableRawBufferPointer) -> UInt64 { buffer.load(as: UInt64.self) }

    /// Deterministic pseudo-random bytes, so a failing case replays.
    private struct Bytes {
        var rng: SplitMix
        init(state: UInt64) { rng = SplitMix(state: state) }
        mutating func next() -> UInt64 { rng.next() }
        mutating func fill(_ buffer: UnsafeMutableRawBufferPointer) {
            for i in buffer.indices { buffer[i] = UInt8(truncatingIfNeeded: next()) }
        }
    }

    func testNothingBeforeTheFirstCommit() {
        withBuffer { buffer in
            let state = CommittedState(buffer)
            XCTAssertNil(state.load())
            XCTAssertEqual(state.capacity, 2032, "two 8-byte-aligned slots of 2040 bytes after the generation")
        }
    }

    func testCommitThenLoadRoundTrips() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            try state.commit([1, 2, 3])
            XCTAssertEqual(state.load(), [1, 2, 3])
            XCTAssertEqual(CommittedState(buffer).load(), [1, 2, 3], "a second view (the successor) sees it")
            try state.commit([])
            XCTAssertEqual(state.load(), [], "an empty state is a state, not nothing")
            let full = (0..<state.capacity).map { UInt8(truncatingIfNeeded: $0 * 7) }
            try state.commit(full)
            XCTAssertEqual(state.load(), full)
        }
    }

    func testCommitsAlternateSlotsAndKeepThePreviousOne() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            try state.commit([0xaa, 0xbb])
            XCTAssertEqual(generation(buffer), 1)
            let slot1 = state.slotOffset(1)
            XCTAssertEqual(buffer.load(fromByteOffset: slot1, as: UInt32.self), 2, "generation 1 is in slot 1")
            try state.commit([0xcc])
            XCTAssertEqual(generation(buffer), 2)
            let slot0 = state.slotOffset(0)
            XCTAssertEqual(buffer.load(fromByteOffset: slot0, as: UInt32.self), 1, "generation 2 is in slot 0")
            XCTAssertEqual(Array(buffer[(slot1 + 8)..<(slot1 + 10)]), [0xaa, 0xbb], "the previous commit is untouched")
            try state.commit([0xdd, 0xee, 0xff])
            XCTAssertEqual(buffer.load(fromByteOffset: slot1, as: UInt32.self), 3, "generation 3 reuses slot 1")
            XCTAssertEqual(state.load(), [0xdd, 0xee, 0xff])
        }
    }

    func testACrashMidCommitLeavesTheLastCommit() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            try state.commit([1])
            try state.commit([2, 2])
            let inactive = state.slotOffset(Int((generation(buffer) + 1) & 1))
            var random = Bytes(state: 1)
            // Killed while writing the next slot: anything at all in it, the generation not yet bumped.
            for _ in 0..<100 {
                random.fill(UnsafeMutableRawBufferPointer(rebasing: buffer[inactive..<(inactive + 2040)]))
                XCTAssertEqual(state.load(), [2, 2])
            }
            // Killed just before the generation store, the next slot complete: still the last commit.
            let spare = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { spare.deallocate() }
            spare.copyMemory(from: UnsafeRawBufferPointer(buffer))
            try CommittedState(spare).commit([3, 3, 3])
            UnsafeMutableRawBufferPointer(rebasing: buffer[inactive..<(inactive + 2040)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: spare[inactive..<(inactive + 2040)]))
            XCTAssertEqual(state.load(), [2, 2])
            // The successor commits over whatever the crash left.
            try state.commit([4])
            XCTAssertEqual(state.load(), [4])
        }
    }

    func testACorruptActiveSlotLoadsNothing() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            try state.commit([9, 9, 9])
            let active = state.slotOffset(Int(generation(buffer) & 1))
            buffer[active + 9] ^= 0x01
            XCTAssertNil(state.load(), "a flipped payload bit fails the checksum")
            buffer[active + 9] ^= 0x01
            XCTAssertEqual(state.load(), [9, 9, 9])
            buffer.storeBytes(of: 2, toByteOffset: active, as: UInt32.self)
            XCTAssertNil(state.load(), "a shortened length fails the checksum")
            buffer.storeBytes(of: UInt32.max, toByteOffset: active, as: UInt32.self)
            XCTAssertNil(state.load(), "a length past the slot is refused before reading")
            buffer.storeBytes(of: 3, toByteOffset: active, as: UInt32.self)
            XCTAssertEqual(state.load(), [9, 9, 9])
            buffer.storeBytes(of: 3, as: UInt64.self)
            XCTAssertNil(state.load(), "a slot is only valid under the generation it was written for")
        }
    }

    func testAnOversizePayloadIsRefusedAndChangesNothing() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            try state.commit([5])
            XCTAssertThrowsError(try state.commit([UInt8](repeating: 0, count: state.capacity + 1))) {
                XCTAssertEqual($0 as? CommittedStateError, .tooLarge(size: 2033, capacity: 2032))
            }
            XCTAssertEqual(generation(buffer), 1)
            XCTAssertEqual(state.load(), [5])
        }
    }

    func testGarbageNeverTrapsAndACommitRecovers() throws {
        try withBuffer { buffer in
            let state = CommittedState(buffer)
            var random = Bytes(state: 2)
            for round in 0..<2000 {
                random.fill(buffer)
                if round % 4 == 0 {
                    buffer.storeBytes(of: UInt32(random.next() % 64), toByteOffset: state.slotOffset(round / 4 % 2), as: UInt32.self)
                }
                _ = state.load()
                if round % 10 == 0 {
                    try state.commit([UInt8(truncatingIfNeeded: round)])
                    XCTAssertEqual(state.load(), [UInt8(truncatingIfNeeded: round)])
                    XCTAssertNotEqual(generation(buffer), 0)
                }
            }
            buffer.storeBytes(of: UInt64.max, as: UInt64.self)
            try state.commit([7])
            XCTAssertEqual(generation(buffer), 2, "wrapping skips generation 0, which means never committed")
            XCTAssertEqual(state.load(), [7])
        }
    }

    func testTheChannelsStateAreaCarriesACommitToAnotherMapping() throws {
        let channel = try LocalChannel(layout: ChannelLayout(lanes: 1, capacity: 4))
        XCTAssertNil(CommittedState(channel.vcpu.state).load(), "a new channel's state area holds no commit")
        try CommittedState(channel.device.state).commit([0x10, 0x20])
        XCTAssertEqual(CommittedState(channel.vcpu.state).load(), [0x10, 0x20])
    }
}
