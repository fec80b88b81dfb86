/// The CPU state a loader asks a vCPU to start in: the loader writes the GDT, page tables and boot information
/// into guest memory, and this says where they are and what the registers hold. It is the one thing the image
/// loaders and the KVM layer share, so it lives apart from both.
public struct EntryState: Equatable, Sendable, Codable {
    public enum Mode: String, Sendable, Codable { case protected32, long64 }

    /// The flat code and data selectors of the loader's GDT.
    public struct Selectors: Equatable, Sendable, Codable {
        public var code: UInt16
        public var data: UInt16
        /// The Linux boot protocol's __BOOT_CS and __BOOT_DS, which the multiboot entry uses too.
        public static let boot = Selectors(code: 0x10, data: 0x18)
    }

    public var mode: Mode
    public var rip: UInt64
    public var rsp: UInt64 = 0
    public var rax: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rsi: UInt64 = 0
    public var gdtBase: UInt64
    public var gdtLimit: UInt16 = 31
    public var selectors: Selectors = .boot
    public var cr3: UInt64 = 0

    public init(mode: Mode, rip: UInt64, rsp: UInt64 = 0, rax: UInt64 = 0, rbx: UInt64 = 0, rsi: UInt64 = 0,
                gdtBase: UInt64, gdtLimit: UInt16 = 31, selectors: Selectors = .boot, cr3: UInt64 = 0) {
        self.mode = mode
        self.rip = rip
        self.rsp = rsp
        self.rax = rax
        self.rbx = rbx
        self.rsi = rsi
        self.gdtBase = gdtBase
        self.gdtLimit = gdtLimit
        self.selectors = selectors
        self.cr3 = cr3
    }
}
