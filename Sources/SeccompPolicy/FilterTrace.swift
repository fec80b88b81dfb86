/// Runs a compiled filter the way the kernel would on one system call, in classic BPF, and counts the instructions
/// it executes: the filter's cost on that call, which every call of a hot path (a vCPU's KVM_RUN) pays.
extension SeccompFilter.Program {
    /// What the filter decided and after how many instructions.
    public struct Verdict: Equatable, Sendable {
        /// The filter's return value (SECCOMP_RET_ALLOW, SECCOMP_RET_TRAP, SECCOMP_RET_ERRNO | errno, ...).
        public let action: UInt32
        public let instructions: Int
        public var allows: Bool { action == 0x7fff_0000 }
    }

    /// nil if the program reads outside `seccomp_data`, jumps out of itself or uses an instruction libseccomp
    /// does not emit.
    public func evaluate(syscall: Int32, arguments: [UInt64] = [], architecture: UInt32 = 0xc000_003e) -> Verdict? {
        var data = [UInt8](repeating: 0, count: 64)  // struct seccomp_data
        func put32(_ v: UInt32, at o: Int) { for i in 0..<4 { data[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        put32(UInt32(bitPattern: syscall), at: 0)
        put32(architecture, at: 4)
        for (i, a) in arguments.prefix(6).enumerated() {
            put32(UInt32(truncatingIfNeeded: a), at: 16 + 8 * i)
            put32(UInt32(truncatingIfNeeded: a >> 32), at: 20 + 8 * i)
        }
        let count = instructions.count / 8
        func field(_ i: Int) -> (code: UInt16, jt: UInt8, jf: UInt8, k: UInt32) {
            let b = instructions[(8 * i)...]
            let s = b.startIndex
            return (UInt16(b[s]) | UInt16(b[s + 1]) << 8, b[s + 2], b[s + 3],
                    UInt32(b[s + 4]) | UInt32(b[s + 5]) << 8 | UInt32(b[s + 6]) << 16 | UInt32(b[s + 7]) << 24)
        }
        var a: UInt32 = 0, x: UInt32 = 0, memory = [UInt32](repeating: 0, count: 16)
        var pc = 0, executed = 0
        while pc < count {
            let (code, jt, jf, k) = field(pc)
            executed += 1
            pc += 1
            switch code {
            case 0x20:  // ld [k]
                guard k % 4 == 0, Int(k) + 4 <= data.count else { return nil }
                let o = Int(k)
                a = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
            case 0x00: a = k                       // ld #k
            case 0x01: x = k                       // ldx #k
            case 0x60: guard k < 16 else { return nil }; a = memory[Int(k)]  // ld M[k]
            case 0x61: guard k < 16 else { return nil }; x = memory[Int(k)]  // ldx M[k]
            case 0x02: guard k < 16 else { return nil }; memory[Int(k)] = a  // st M[k]
            case 0x03: guard k < 16 else { return nil }; memory[Int(k)] = x  // stx M[k]
            case 0x54: a &= k                      // and #k
            case 0x44: a |= k                      // or #k
            case 0x07: x = a                       // tax
            case 0x87: a = x                       // txa
            case 0x05: pc += Int(k)                // ja
            case 0x15: pc += a == k ? Int(jt) : Int(jf)       // jeq #k
            case 0x25: pc += a > k ? Int(jt) : Int(jf)        // jgt #k
            case 0x35: pc += a >= k ? Int(jt) : Int(jf)       // jge #k
            case 0x45: pc += a & k != 0 ? Int(jt) : Int(jf)   // jset #k
            case 0x1d: pc += a == x ? Int(jt) : Int(jf)       // jeq x
            case 0x06: return Verdict(action: k, instructions: executed)   // ret #k
            case 0x16: return Verdict(action: a, instructions: executed)   // ret a
            default: return nil
            }
        }
        return nil
    }

    /// The number of BPF instructions in the program.
    public var length: Int { instructions.count / 8 }
}
