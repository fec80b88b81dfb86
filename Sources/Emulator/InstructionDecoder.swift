import CZydis

import CKVM
import Memory

/// The CPU mode an instruction is decoded in.
public enum CPUMode: String, Sendable {
    case real16, protected16, protected32, long64

    /// The mode a vCPU is in, from CR0.PE, EFER.LMA and CS.L/CS.D.
    public init(_ s: kvm_sregs) {
        if s.cr0 & 1 == 0 { self = .real16 } else if s.efer & 0x400 != 0 && s.cs.l != 0 { self = .long64 } else {
            self = s.cs.db != 0 ? .protected32 : .protected16
        }
    }

    var zydis: ZydisMachineMode {
        switch self {
        case .real16: return ZYDIS_MACHINE_MODE_REAL_16
        case .protected16: return ZYDIS_MACHINE_MODE_LEGACY_16
        case .protected32: return ZYDIS_MACHINE_MODE_LEGACY_32
        case .long64: return ZYDIS_MACHINE_MODE_LONG_64
        }
    }
}

/// One decoded instruction: what the fallback needs (length, the operation, operand size, immediate) and
/// Intel-syntax text for crash reports.
public struct DecodedInstruction: Equatable, Sendable {
    public enum MessageKind: Equatable, Sendable {
        case int3
        case int(UInt8)
        case into
        case fwait
        case iret
        /// No architectural effect beyond RIP: NOP in all its lengths, ENDBR32/64, PAUSE.
        case nop
        /// CLAC and CLD: clear RFLAGS.AC / RFLAGS.DF.
        case clac, cld
        case other
    }
    public let length: Int
    public let operation: MessageKind
    /// Operand size in bits (16, 32 or 64): decides the width of IRET's pops.
    public let operandSize: Int
    public let text: String
    public let bytes: [UInt8]
}

/// x86 decoding with Zydis (Debian's libzydis-dev).
public enum InstructionDecoder {
    /// The linear address of CS:RIP.
    public static func linearRIP(_ regs: kvm_regs, _ sregs: kvm_sregs) -> UInt64 {
        CPUMode(sregs) == .long64 ? regs.rip : (sregs.cs.base &+ regs.rip) & 0xffff_ffff
    }

    /// Up to 15 bytes at `linear` through the MMU, stopping at the first that cannot be fetched; the error is
    /// what stopped the fetch (nil when all 15 were read).
    public static func fetch(_ linear: UInt64, mmu: MMU, user: Bool) -> ([UInt8], MMUError?) {
        var bytes: [UInt8] = []
        for i in 0..<15 {
            do { bytes += try mmu.read(linear &+ UInt64(i), count: 1, user ? [.fetch, .user] : .fetch) } catch {
                return (bytes, error)
            }
        }
        return (bytes, nil)
    }

    /// Decodes the instruction at the start of `bytes`; nil when the bytes are not a valid instruction (or too few).
    public static func decode(_ bytes: [UInt8], mode: CPUMode, address: UInt64 = 0) -> DecodedInstruction? {
        var out = ZydisDisassembledInstruction()
        let status = bytes.withUnsafeBytes { buffer in
            ZydisDisassembleIntel(mode.zydis, address, buffer.baseAddress, buffer.count, &out)
        }
        guard vmm_zyan_success(status) != 0 else { return nil }
        let info = out.info
        let length = Int(info.length)
        let text = withUnsafeBytes(of: out.text) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let operation: DecodedInstruction.MessageKind
        switch info.mnemonic {
        case ZYDIS_MNEMONIC_INT3: operation = .int3
        case ZYDIS_MNEMONIC_INT:
            operation = .int(UInt8(truncatingIfNeeded: out.operands.0.imm.value.u))
        case ZYDIS_MNEMONIC_INTO: operation = .into
        case ZYDIS_MNEMONIC_FWAIT: operation = .fwait
        case ZYDIS_MNEMONIC_IRET, ZYDIS_MNEMONIC_IRETD, ZYDIS_MNEMONIC_IRETQ: operation = .iret
        case ZYDIS_MNEMONIC_NOP, ZYDIS_MNEMONIC_ENDBR32, ZYDIS_MNEMONIC_ENDBR64, ZYDIS_MNEMONIC_PAUSE: operation = .nop
        case ZYDIS_MNEMONIC_CLAC: operation = .clac
        case ZYDIS_MNEMONIC_CLD: operation = .cld
        default: operation = .other
        }
        return DecodedInstruction(length: length, operation: operation, operandSize: Int(info.operand_width),
                                  text: text, bytes: Array(bytes.prefix(length)))
    }
}
