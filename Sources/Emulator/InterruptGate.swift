/// A segment descriptor from the GDT or LDT, decoded (Intel SDM vol. 3, 3.4.5); the accessed bit is left as the
/// table has it.
public struct SegmentDescriptor: Equatable, Sendable {
    public var base: UInt64
    /// The limit in bytes (granularity applied).
    public var limit: UInt32
    public var type: UInt8
    /// 1: code or data; 0: system (TSS, LDT, gates).
    public var s: UInt8
    public var dpl: UInt8
    public var present: UInt8
    public var avl: UInt8
    public var l: UInt8
    public var db: UInt8
    public var g: UInt8

    public init(raw d: UInt64) {
        base = ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000)
        g = UInt8((d >> 55) & 1)
        let limit = UInt32((d & 0xffff) | ((d >> 32) & 0xf_0000))
        self.limit = g == 1 ? (limit << 12) | 0xfff : limit
        type = UInt8((d >> 40) & 0xf)
        s = UInt8((d >> 44) & 1)
        dpl = UInt8((d >> 45) & 3)
        present = UInt8((d >> 47) & 1)
        avl = UInt8((d >> 52) & 1)
        l = UInt8((d >> 53) & 1)
        db = UInt8((d >> 54) & 1)
    }

    public var isCode: Bool { s == 1 && type & 8 != 0 }
    public var isConforming: Bool { isCode && type & 4 != 0 }
    public var isWritableData: Bool { s == 1 && type & 0xa == 2 }
}

/// The checks the CPU makes when it delivers an event through the IDT (Intel SDM vol. 3, 6.12.1 and 6.14.1, the
/// INT n pseudo-code; KVM leaves part of them out on these hosts): IDT limit, gate type, gate DPL against CPL for
/// software interrupts, gate present, the target code segment, the stack the frame goes to (TSS stack switch, IST),
/// and whether that stack can be written. Pure: descriptor tables and the stack are reached through `Memory`.
///
/// Error codes are the SDM's: an IDT entry is `vector * 8 + 2` (the IDT bit), a selector its index and TI bit;
/// EXT (bit 0) is set for events from outside the instruction (exceptions raised while delivering, hardware
/// interrupts) and clear for INT n, INT3 and INTO.
public enum InterruptGate {
    /// Where the event comes from: software interrupts are checked against the gate's DPL and have EXT clear.
    public enum Source: Equatable, Sendable { case software, hardware }

    /// A fault instead of the delivery.
    public struct Fault: Error, Equatable, Sendable {
        public var vector: UInt8
        public var errorCode: UInt32?
        /// CR2 for a page fault.
        public var address: UInt64?
        public init(vector: UInt8, errorCode: UInt32?, address: UInt64? = nil) {
            self.vector = vector
            self.errorCode = errorCode
            self.address = address
        }
        static func gp(_ code: UInt32) -> Fault { Fault(vector: 13, errorCode: code) }
    }

    /// Guest-virtual (linear) memory as delivery sees it: supervisor (implicit) accesses. A page fault is thrown
    /// as `Fault` (vector 14 with its error code and address); anything else the caller cannot represent may be
    /// thrown as its own error and passes through unchanged.
    public protocol Memory {
        func read(_ linear: UInt64, count: Int) throws -> [UInt8]
        /// Throws the fault a write of `count` bytes at `linear` would raise (`user`: with CPL3 privileges).
        func checkWrite(_ linear: UInt64, count: Int, user: Bool) throws
    }

    /// The vCPU state delivery depends on.
    public struct Context: Equatable, Sendable {
        public var mode: CPUMode
        public var cpl: Int
        public var idtBase: UInt64, idtLimit: UInt32
        public var gdtBase: UInt64, gdtLimit: UInt32
        public var ldtBase: UInt64, ldtLimit: UInt32, ldtUsable: Bool
        public var trBase: UInt64, trLimit: UInt32
        public var rsp: UInt64
        public var ssBase: UInt64
        /// SS.B: a 32-bit stack pointer outside long mode.
        public var ssBig: Bool

        public init(mode: CPUMode, cpl: Int, idtBase: UInt64, idtLimit: UInt32, gdtBase: UInt64, gdtLimit: UInt32,
                    ldtBase: UInt64 = 0, ldtLimit: UInt32 = 0, ldtUsable: Bool = false, trBase: UInt64 = 0,
                    trLimit: UInt32 = 0, rsp: UInt64, ssBase: UInt64 = 0, ssBig: Bool = true) {
            self.mode = mode; self.cpl = cpl; self.idtBase = idtBase; self.idtLimit = idtLimit
            self.gdtBase = gdtBase; self.gdtLimit = gdtLimit; self.ldtBase = ldtBase; self.ldtLimit = ldtLimit
            self.ldtUsable = ldtUsable; self.trBase = trBase; self.trLimit = trLimit; self.rsp = rsp
            self.ssBase = ssBase; self.ssBig = ssBig
        }
    }

    /// A delivery that passed every check.
    public struct Delivery: Equatable, Sendable {
        public var codeSelector: UInt16
        public var newCPL: Int
        /// The linear address just above the frame (after the stack switch and 64-bit alignment).
        public var stackTop: UInt64
        public var frameBytes: Int
    }

    /// Checks the delivery of `vector` and returns it, or throws the fault the CPU would raise instead.
    public static func check(vector: UInt8, source: Source, hasErrorCode: Bool, context c: Context,
                             memory: some Memory) throws -> Delivery {
        let ext: UInt32 = source == .hardware ? 1 : 0
        let idtCode = UInt32(vector) * 8 + 2 + ext
        if c.mode == .real16 {
            // The IVT: 4-byte entries, no gates; past its limit #GP, which real mode delivers without an error code.
            guard UInt32(vector) * 4 + 3 <= c.idtLimit else { throw Fault(vector: 13, errorCode: nil) }
            return Delivery(codeSelector: 0, newCPL: 0, stackTop: c.ssBase &+ (c.rsp & 0xffff), frameBytes: 6)
        }
        let long = c.mode == .long64
        let size: UInt32 = long ? 16 : 8
        guard UInt32(vector) * size + size - 1 <= c.idtLimit else { throw Fault.gp(idtCode) }
        let raw = try memory.read(c.idtBase &+ UInt64(vector) * UInt64(size), count: Int(size))
        let low = le(raw, 0)
        let type = UInt8((low >> 40) & 0xf)
        let gateDPL = Int((low >> 45) & 3)
        let present = (low >> 47) & 1 == 1
        let selector = UInt16((low >> 16) & 0xffff)
        // Interrupt and trap gates (64-bit ones only in long mode); a task gate would need a task switch.
        let gate16 = !long && (type == 0x6 || type == 0x7)
        let valid = (low >> 44) & 1 == 0 && (type == 0xe || type == 0xf || gate16 || (!long && type == 0x5))
        guard valid else { throw Fault.gp(idtCode) }
        if source == .software && gateDPL < c.cpl { throw Fault.gp(idtCode) }
        guard present else { throw Fault(vector: 11, errorCode: idtCode) }
        if type == 0x5 { throw Unsupported(reason: "task gate for vector \(vector)") }

        guard selector & 0xfffc != 0 else { throw Fault.gp(ext) }
        let selectorCode = UInt32(selector & 0xfffc) | ext
        let code = try descriptor(selector, c, memory, fault: Fault.gp(selectorCode))
        guard code.isCode, Int(code.dpl) <= c.cpl else { throw Fault.gp(selectorCode) }
        if long { guard code.l == 1, code.db == 0 else { throw Fault.gp(selectorCode) } }
        guard code.present == 1 else { throw Fault(vector: 11, errorCode: selectorCode) }
        let newCPL = code.isConforming ? c.cpl : Int(code.dpl)

        let width = long ? 8 : (gate16 ? 2 : 4)
        let errorBytes = hasErrorCode ? width : 0
        let ist = long ? Int((low >> 32) & 7) : 0
        var top: UInt64
        var frame: Int
        if long {
            if ist != 0 || newCPL < c.cpl {
                top = try tssWord(offset: ist != 0 ? 0x24 + 8 * UInt32(ist - 1) : 4 + 8 * UInt32(newCPL), size: 8, c, memory,
                                  ext: ext)
            } else {
                top = c.rsp
            }
            guard isCanonical(top) else { throw Fault(vector: 12, errorCode: ext) }
            top &= ~0xf
            frame = 40 + errorBytes
        } else if newCPL < c.cpl {
            // The inner stack from the 32-bit TSS: SS:ESP for the new privilege level.
            let esp = try tssWord(offset: 4 + 8 * UInt32(newCPL), size: 4, c, memory, ext: ext)
            let ssSelector = UInt16(try tssWord(offset: 8 + 8 * UInt32(newCPL), size: 2, c, memory, ext: ext))
            let tsCode = UInt32(ssSelector & 0xfffc) | ext
            guard ssSelector & 0xfffc != 0 else { throw Fault(vector: 10, errorCode: ext) }
            let ss = try descriptor(ssSelector, c, memory, fault: Fault(vector: 10, errorCode: tsCode))
            guard Int(ssSelector & 3) == newCPL, Int(ss.dpl) == newCPL, ss.isWritableData else {
                throw Fault(vector: 10, errorCode: tsCode)
            }
            guard ss.present == 1 else { throw Fault(vector: 12, errorCode: tsCode) }
            top = (ss.base &+ (ss.db == 1 ? esp : esp & 0xffff)) & 0xffff_ffff
            frame = 5 * width + errorBytes
        } else {
            top = (c.ssBase &+ (c.ssBig ? c.rsp & 0xffff_ffff : c.rsp & 0xffff)) & 0xffff_ffff
            frame = 3 * width + errorBytes
        }
        try checkStack(top: top, frame: frame, width: width, user: newCPL == 3, memory)
        return Delivery(codeSelector: selector, newCPL: newCPL, stackTop: top, frameBytes: frame)
    }

    /// A delivery step the fallback cannot carry out (a task switch).
    public struct Unsupported: Error, Equatable { public var reason: String }

    /// The GDT or LDT descriptor of `selector`; beyond its table's limit, `fault`.
    public static func descriptor(_ selector: UInt16, _ c: Context, _ memory: some Memory, fault: Fault) throws -> SegmentDescriptor {
        let local = selector & 4 != 0
        let offset = UInt64(selector & 0xfff8)
        guard offset + 7 <= UInt64(local ? c.ldtLimit : c.gdtLimit), !local || c.ldtUsable else { throw fault }
        return SegmentDescriptor(raw: le(try memory.read((local ? c.ldtBase : c.gdtBase) &+ offset, count: 8), 0))
    }

    private static func tssWord(offset: UInt32, size: Int, _ c: Context, _ memory: some Memory, ext: UInt32) throws -> UInt64 {
        // A TSS too short for the field is #TS with TR's selector; KVM keeps only TR's base and limit, so EXT alone.
        guard offset + UInt32(size) - 1 <= c.trLimit else { throw Fault(vector: 10, errorCode: ext) }
        return le(try memory.read(c.trBase &+ UInt64(offset), count: size), 0)
    }

    /// The frame is pushed from the top down: the first push that cannot be written is the fault (and CR2).
    private static func checkStack(top: UInt64, frame: Int, width: Int, user: Bool, _ memory: some Memory) throws {
        var slot = top &- UInt64(width)
        let bottom = top &- UInt64(frame)
        while true {
            try memory.checkWrite(slot, count: width, user: user)
            // Next: the highest slot on the page below this one, if the frame reaches it.
            let pageStart = slot & ~0xfff
            guard pageStart > bottom, pageStart != 0 else { return }
            slot = pageStart &- UInt64(width)
        }
    }

    static func isCanonical(_ a: UInt64) -> Bool { a < 0x0000_8000_0000_0000 || a >= 0xffff_8000_0000_0000 }

    static func le(_ b: [UInt8], _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<min(8, b.count - at) { v |= UInt64(b[at + i]) << (8 * UInt64(i)) }
        return v
    }
}
