/// Deterministic pseudo-random numbers (SplitMix64) for fuzz and property tests: seeded, so a failing case replays
/// from its seed.
public struct SplitMix: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    /// True `percent` times in a hundred.
    public mutating func chance(_ percent: UInt64) -> Bool { next() % 100 < percent }
}

extension SplitMix {
    /// Bytes for a restore fuzzer: random bytes of about `valid`'s length when `random`, otherwise `valid` with one
    /// to three bytes changed and, in `round`s where round % 7 == 1, cut short.
    public mutating func hostileSnapshot(from valid: [UInt8], random: Bool, round: Int) -> [UInt8] {
        if random {
            return (0..<Int.random(in: 0...(valid.count + 8), using: &self)).map { _ in UInt8.random(in: 0...255, using: &self) }
        }
        var bytes = valid
        for _ in 0..<Int.random(in: 1...3, using: &self) {
            bytes[Int.random(in: 0..<bytes.count, using: &self)] = UInt8.random(in: 0...255, using: &self)
        }
        if round % 7 == 1 { bytes.removeLast(Int.random(in: 0...bytes.count, using: &self)) }
        return bytes
    }
}
