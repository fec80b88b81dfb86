import Glibc

/// Reads and validates a config file. Every error names the JSON path and the reason; nothing starts
/// before the whole file is known good.
public enum ConfigParser {
    public static func load(path: String) throws(ConfigError) -> VMConfig {
        guard let bytes = readFile(path) else {
            throw ConfigError("--config-file", "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        return try parse(bytes)
    }

    public static func parse(_ bytes: [UInt8]) throws(ConfigError) -> VMConfig {
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch { throw ConfigError("(file)", error.description) }
        var top = try ObjectReader(json, path: "")

        guard let bootJSON = top.value("boot-source") else { throw ConfigError("boot-source", "missing (the kernel to boot)") }
        var config = VMConfig(bootSource: try bootSource(bootJSON))
        if let m = top.value("machine-config") { config.machine = try machine(m) }
        if let c = top.value("cpu-config") { config.cpuid = try cpuConfigOrTemplateFile(c) }
        if let l = top.value("logger") { config.logger = try logger(l) }
        if let m = top.value("metrics") { config.metrics = try metrics(m) }
        if let v = top.value("vmm") { config.vmm = try vmmSettings(v) }
        if let d = top.value("drives"), d != .null { config.drives = try drives(d) }
        if let e = top.value("entropy"), e != .null { config.entropy = try entropy(e) }
        if let n = top.value("network-interfaces"), n != .null { config.networkInterfaces = try networkInterfaces(n) }
        if let v = top.value("vsock"), v != .null { config.vsock = try vsock(v) }
        try rejectUnimplementedSections(&top)
        try top.finish()
        let virtioDevices = config.virtioDeviceCount
        guard virtioDevices <= maxVirtioDevices else {
            throw ConfigError(config.networkInterfaces.isEmpty ? "drives" : "network-interfaces",
                              "\(virtioDevices) virtio devices (drives, network interfaces, vsock, entropy); at most \(maxVirtioDevices): one interrupt pin each")
        }
        try checkImagesFit(config)
        try checkHelperIDs(config.vmm.sandbox)
        try checkDeviceNames(config)
        return config
    }

    /// The ids helpers run as (when vmm runs as root) must be unprivileged and nobody else's. Root's would undo the
    /// sandbox; an id that a user or a service already runs as would let that account's processes signal or trace
    /// helpers that run guest-controlled code, and a compromised helper reach that account's files and processes.
    /// So, as Firecracker's jailer expects, helpers get an id of their own; here that is checked: an id the host's
    /// user or group database knows (getpwuid/getgrgid, so NSS sources too) is refused, defaults included.
    static func checkHelperIDs(_ sandbox: VMConfig.Sandbox) throws(ConfigError) {
        // Ids from the range are checked when a VM takes one (an id some account uses is skipped then).
        guard sandbox.sharedIDs else { return }
        guard sandbox.uid != 0 else { throw ConfigError("vmm.sandbox.uid", "0 is root; helpers must run as an unprivileged uid") }
        guard sandbox.gid != 0 else { throw ConfigError("vmm.sandbox.gid", "0 is root's group; helpers must run as an unprivileged gid") }
        if let account = getpwuid(sandbox.uid) {
            throw ConfigError("vmm.sandbox.uid", "\(sandbox.uid) is the uid of the host account \"\(String(cString: account.pointee.pw_name))\"; helpers need a uid no account uses")
        }
        if let group = getgrgid(sandbox.gid) {
            throw ConfigError("vmm.sandbox.gid", "\(sandbox.gid) is the gid of the host group \"\(String(cString: group.pointee.gr_name))\"; helpers need a gid no group uses")
        }
    }

    /// A kernel or initrd larger than guest RAM cannot be loaded; saying so here keeps vmm from reading a file of any
    /// size into memory (the supervisor caps its reads at the same size, for a file that grows after this check).
    static func checkImagesFit(_ config: VMConfig) throws(ConfigError) {
        let ram = config.machine.memSizeMiB << 20
        for (path, jsonPath) in [(config.bootSource.kernelImagePath, "boot-source.kernel_image_path"),
                                 (config.bootSource.initrdPath, "boot-source.initrd_path")] {
            guard let path else { continue }
            var st = stat()
            guard stat(path, &st) == 0 else { throw ConfigError(jsonPath, "\(path): \(String(cString: strerror(errno)))") }
            guard Int(st.st_size) <= ram else {
                throw ConfigError(jsonPath, "\(path) has \(st.st_size) bytes, more than guest RAM (machine-config.mem_size_mib \(config.machine.memSizeMiB) MiB)")
            }
        }
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n > 0 { out += buf[0..<n] }
            if n < buf.count { return ferror(f) != 0 ? nil : out }
            if out.count > 16 << 20 { errno = EFBIG; return nil }
        }
    }

    /// A path to a regular file this process can read.
    static func readableFile(_ path: String, at jsonPath: String) throws(ConfigError) -> String {
        guard !path.isEmpty else { throw ConfigError(jsonPath, "empty path") }
        var st = stat()
        guard stat(path, &st) == 0 else { throw ConfigError(jsonPath, "\(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw ConfigError(jsonPath, "\(path) is not a regular file") }
        guard access(path, R_OK) == 0 else { throw ConfigError(jsonPath, "\(path): \(String(cString: strerror(errno)))") }
        return path
    }

    static func bootSource(_ v: JSONValue) throws(ConfigError) -> VMConfig.BootSource {
        var r = try ObjectReader(v, path: "boot-source")
        guard let kernel = try r.string("kernel_image_path") else { throw ConfigError(r.child("kernel_image_path"), "missing") }
        let source = VMConfig.BootSource(
            kernelImagePath: try readableFile(kernel, at: r.child("kernel_image_path")),
            initrdPath: try r.string("initrd_path").map { (p) throws(ConfigError) in try readableFile(p, at: r.child("initrd_path")) },
            bootArgs: try r.string("boot_args") ?? "")
        guard source.bootArgs.utf8.count < 2048 else { throw ConfigError(r.child("boot_args"), "longer than 2047 bytes") }
        try r.finish()
        return source
    }

    static func machine(_ v: JSONValue) throws(ConfigError) -> VMConfig.Machine {
        var r = try ObjectReader(v, path: "machine-config")
        var m = VMConfig.Machine()
        if let n = try r.integer("vcpu_count", in: 1...32) { m.vcpuCount = n }
        guard let mem = try r.integer("mem_size_mib", in: 0...Int(Int32.max)) else { throw ConfigError(r.child("mem_size_mib"), "missing") }
        guard mem >= 2 else { throw ConfigError(r.child("mem_size_mib"), "\(mem) MiB is too small (at least 2)") }
        guard mem <= VMConfig.maxMemoryMiB else {
            throw .notSupportedYet(r.child("mem_size_mib"), "more than \(VMConfig.maxMemoryMiB) MiB needs RAM above the 32-bit MMIO gap")
        }
        m.memSizeMiB = mem
        if try r.bool("smt") == true { throw .notSupportedYet(r.child("smt"), "SMT topology: every vCPU is a core of its own") }
        m.trackDirtyPages = try r.bool("track_dirty_pages") ?? false
        if let t = try r.string("cpu_template"), t != "None" {
            throw .notSupportedYet(r.child("cpu_template"), "static template \"\(t)\"; use cpu-config.cpuid_modifiers")
        }
        if let h = try r.string("huge_pages"), h != "None" { throw .notSupportedYet(r.child("huge_pages"), "huge pages \"\(h)\"") }
        try r.finish()
        return m
    }

    static func hex32(_ v: JSONValue, path: String) throws(ConfigError) -> UInt32 {
        switch v {
        case .string(let s):
            let digits = s.hasPrefix("0x") || s.hasPrefix("0X") ? String(s.dropFirst(2)) : s
            let radix = digits.count == s.count ? 10 : 16
            guard let n = UInt32(digits, radix: radix) else { throw ConfigError(path, "\"\(s)\" is not a 32-bit integer") }
            return n
        case .number:
            return UInt32(try ObjectReader.integer(v, path: path, in: 0...Int(UInt32.max)))
        default:
            throw ConfigError(path, "expected a string such as \"0x1\", found \(v.kind)")
        }
    }

    static func cpuConfig(_ v: JSONValue, path: String = "cpu-config") throws(ConfigError) -> [VMConfig.CPUIDRule] {
        var r = try ObjectReader(v, path: path)
        var rules: [VMConfig.CPUIDRule] = []
        if let mods = r.value("cpuid_modifiers") {
            guard case .array(let items) = mods else { throw ConfigError(r.child("cpuid_modifiers"), "expected an array") }
            for (i, item) in items.enumerated() {
                let p = "\(r.child("cpuid_modifiers"))[\(i)]"
                var m = try ObjectReader(item, path: p)
                guard let leafJSON = m.value("leaf") else { throw ConfigError(m.child("leaf"), "missing") }
                let leaf = try hex32(leafJSON, path: m.child("leaf"))
                let subleaf = try m.value("subleaf").map { (s) throws(ConfigError) in try hex32(s, path: m.child("subleaf")) } ?? 0
                _ = try m.integer("flags", in: 0...1)
                guard case .array(let regs)? = m.value("modifiers") else { throw ConfigError(m.child("modifiers"), "missing or not an array") }
                for (j, reg) in regs.enumerated() {
                    var rr = try ObjectReader(reg, path: "\(m.child("modifiers"))[\(j)]")
                    guard let name = try rr.string("register"), ["eax", "ebx", "ecx", "edx"].contains(name) else {
                        throw ConfigError(rr.child("register"), "expected one of eax, ebx, ecx, edx")
                    }
                    guard let bitmap = try rr.string("bitmap") else { throw ConfigError(rr.child("bitmap"), "missing") }
                    guard let (clear, set) = parseBitmap(bitmap) else {
                        throw ConfigError(rr.child("bitmap"), "expected \"0b\" and 32 characters of 0, 1 or x")
                    }
                    try rr.finish()
                    if leaf == 0x8000_0008 && name == "eax" { try checkMaxPhysicalAddress(clear: clear, set: set, at: rr.child("bitmap")) }
                    rules.append(.init(leaf: leaf, subleaf: subleaf, register: name, clear: clear, set: set))
                }
                try m.finish()
            }
        }
        try r.rejectIfSet("msr_modifiers", "MSR templates")
        try r.rejectIfSet("kvm_capabilities", "KVM capability templates")
        try r.finish()
        return rules
    }

    /// MAXPHYADDR (CPUID 0x80000008 EAX[7:0]) from a template must be one a guest and the vcpu process's page
    /// walker can use: 32 to 52 bits (x86-64 defines at most 52; the walker computes `(1 << bits) - 1`, and below 32
    /// the guest could not reach its local APIC at 0xFEE00000). A template that changes some of those bits must give
    /// all eight: with `x` among them the result would depend on the host's value.
    static func checkMaxPhysicalAddress(clear: UInt32, set: UInt32, at path: String) throws(ConfigError) {
        let given = (clear | set) & 0xff
        guard given != 0 else { return }
        guard given == 0xff else {
            throw ConfigError(path, "MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) is changed only in part; give all eight bits (no x)")
        }
        let bits = set & 0xff
        guard (32...52).contains(bits) else {
            throw ConfigError(path, "MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) \(bits) is out of range 32...52 (x86-64 physical addresses have at most 52 bits)")
        }
    }

    /// "0b" and 32 of '0', '1', 'x' (most significant first) into (bits forced to 0, bits forced to 1).
    public static func parseBitmap(_ s: String) -> (UInt32, UInt32)? {
        guard s.hasPrefix("0b") else { return nil }
        let bits = Array(s.utf8.dropFirst(2))
        guard bits.count == 32 else { return nil }
        var clear: UInt32 = 0, set: UInt32 = 0
        for (i, c) in bits.enumerated() {
            let bit = UInt32(1) << UInt32(31 - i)
            switch c {
            case UInt8(ascii: "0"): clear |= bit
            case UInt8(ascii: "1"): set |= bit
            case UInt8(ascii: "x"): break
            default: return nil
            }
        }
        return (clear, set)
    }

    /// The most virtio devices a VM can have: one IOAPIC pin each, pins 5 to 23.
    public static let maxVirtioDevices = 19

    static func drives(_ v: JSONValue) throws(ConfigError) -> [VMConfig.Drive] {
        guard case .array(let items) = v else { throw ConfigError("drives", "expected an array") }
        guard items.count < maxVirtioDevices else { throw ConfigError("drives", "\(items.count) drives; at most \(maxVirtioDevices - 1) (one interrupt pin each, one left for entropy)") }
        var drives: [VMConfig.Drive] = []
        for (i, item) in items.enumerated() {
            let drive = try drive(item, path: "drives[\(i)]", index: i)
            if let other = drives.first(where: { $0.driveID == drive.driveID }) {
                throw ConfigError("drives[\(i)].drive_id", "\"\(other.driveID)\" is used twice")
            }
            if drive.isRootDevice, let root = drives.first(where: \.isRootDevice) {
                throw ConfigError("drives[\(i)].is_root_device", "\"\(root.driveID)\" is the root device already")
            }
            drives.append(drive)
        }
        // The root device is the first disk the guest sees (/dev/vda), as in Firecracker.
        return drives.filter(\.isRootDevice) + drives.filter { !$0.isRootDevice }
    }

    /// One `drives[]` entry (also the body of the API's `PUT /drives/{id}`).
    static func drive(_ item: JSONValue, path jsonPath: String, index i: Int) throws(ConfigError) -> VMConfig.Drive {
        var r = try ObjectReader(item, path: jsonPath)
        guard let id = try r.string("drive_id") else { throw ConfigError(r.child("drive_id"), "missing") }
        guard !id.isEmpty, id.utf8.count <= 20, id.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw ConfigError(r.child("drive_id"), "\"\(id)\" must be 1 to 20 printable characters (the guest reads it as the disk's serial)")
        }
        guard let path = try r.string("path_on_host") else { throw ConfigError(r.child("path_on_host"), "missing") }
        var drive = VMConfig.Drive(driveID: id, pathOnHost: try readableFile(path, at: r.child("path_on_host")))
        drive.configIndex = i
        drive.isRootDevice = try r.bool("is_root_device") ?? false
        drive.isReadOnly = try r.bool("is_read_only") ?? false
        if !drive.isReadOnly && access(path, W_OK) != 0 {
            throw ConfigError(r.child("path_on_host"), "\(path) is not writable (set is_read_only for a read-only disk)")
        }
        drive.partUUID = try r.string("partuuid")
        if let uuid = drive.partUUID {
            guard uuid.utf8.count <= 64, uuid.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x66) || $0 == 0x2d }) else {
                throw ConfigError(r.child("partuuid"), "\"\(uuid)\" is not a partition UUID (hex digits and dashes)")
            }
        }
        if let cache = try r.string("cache_type") {
            guard let t = VMConfig.Drive.CacheType(rawValue: cache) else {
                throw ConfigError(r.child("cache_type"), "expected Unsafe or Writeback")
            }
            drive.cacheType = t
        }
        if let engine = try r.string("io_engine"), engine != "Sync" {
            guard engine == "Async" else { throw ConfigError(r.child("io_engine"), "expected Sync or Async") }
            throw .notSupportedYet(r.child("io_engine"), "Async (io_uring); the device process does synchronous I/O")
        }
        try r.rejectIfSet("rate_limiter", "rate limiting of drives")
        try r.rejectIfSet("socket", "vhost-user drives")
        try r.finish()
        return drive
    }

    static func entropy(_ v: JSONValue) throws(ConfigError) -> VMConfig.Entropy {
        var r = try ObjectReader(v, path: "entropy")
        try r.rejectIfSet("rate_limiter", "rate limiting of the entropy device")
        try r.finish()
        return VMConfig.Entropy()
    }

    static func logger(_ v: JSONValue) throws(ConfigError) -> VMConfig.Logger {
        var r = try ObjectReader(v, path: "logger")
        var l = VMConfig.Logger()
        l.logPath = try r.string("log_path")
        if let level = try r.string("level") {
            guard let parsed = VMConfig.Logger.Level.allCases.first(where: { $0.rawValue.lowercased() == level.lowercased() }) else {
                throw ConfigError(r.child("level"), "expected one of \(VMConfig.Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            l.level = parsed
        }
        l.showLevel = try r.bool("show_level")
        l.showLogOrigin = try r.bool("show_log_origin")
        try r.rejectIfSet("module", "per-module log filters")
        try r.finish()
        return l
    }

    static func cpuList(_ v: JSONValue?, path: String) throws(ConfigError) -> [Int] {
        guard let v else { return [] }
        guard case .array(let items) = v else { throw ConfigError(path, "expected an array of CPU numbers") }
        return try items.enumerated().map { (i, item) throws(ConfigError) in
            try ObjectReader.integer(item, path: "\(path)[\(i)]", in: 0...1023)
        }
    }

    static func vmmSettings(_ v: JSONValue) throws(ConfigError) -> VMConfig.VMM {
        var r = try ObjectReader(v, path: "vmm")
        var s = VMConfig.VMM()
        if let serialJSON = r.value("serial") {
            var sr = try ObjectReader(serialJSON, path: r.child("serial"))
            if let out = try sr.string("output") {
                switch out {
                case "stdout": s.serialOutput = .stdout
                case "none": s.serialOutput = .none
                case "": throw ConfigError(sr.child("output"), "empty; use \"stdout\", \"none\" or a file path")
                default: s.serialOutput = .file(out)
                }
            }
            if let input = try sr.string("input") {
                switch input {
                case "stdin": s.serialInputFromStdin = true
                case "none": s.serialInputFromStdin = false
                default: throw ConfigError(sr.child("input"), "expected \"stdin\" or \"none\"")
                }
            }
            try sr.finish()
        }
        s.spinBudgetMicroseconds = try r.integer("spin_budget_us", in: 0...1_000_000) ?? s.spinBudgetMicroseconds
        s.deviceTimeoutMs = try r.integer("device_timeout_ms", in: 1...600_000) ?? s.deviceTimeoutMs
        s.coalescedWrites = try r.bool("coalesced_writes") ?? s.coalescedWrites
        s.debugExit = try r.bool("debug_exit") ?? s.debugExit
        s.panicWatch = try r.bool("panic_watch") ?? s.panicWatch
        if let quirks = try r.string("host_quirks") {
            guard quirks == "auto" || quirks == "off" else { throw ConfigError(r.child("host_quirks"), "expected \"auto\" or \"off\"") }
            s.hostQuirks = quirks == "auto"
        }
        if let p = r.value("placement") {
            var pr = try ObjectReader(p, path: r.child("placement"))
            s.vcpuCPUs = try cpuList(pr.value("vcpu"), path: pr.child("vcpu"))
            s.deviceCPUs = try cpuList(pr.value("devices"), path: pr.child("devices"))
            try pr.finish()
        }
        if let sb = r.value("sandbox") {
            var sr = try ObjectReader(sb, path: r.child("sandbox"))
            if let mode = try sr.string("seccomp") {
                guard mode == "kill" || mode == "log" else { throw ConfigError(sr.child("seccomp"), "expected \"kill\" or \"log\"") }
                s.sandbox.seccompLogOnly = mode == "log"
            }
            if let start = try sr.string("helper_start") {
                guard start == "fork" || start == "exec" else { throw ConfigError(sr.child("helper_start"), "expected \"fork\" or \"exec\"") }
                s.sandbox.forkHelpers = start == "fork"
            }
            // (uid_t)-1 means "unchanged" to setresuid; 0 and ids of accounts are refused in checkHelperIDs.
            let uid = try sr.integer("uid", in: 0...Int(UInt32.max - 1)), gid = try sr.integer("gid", in: 0...Int(UInt32.max - 1))
            if uid != nil || gid != nil {
                s.sandbox.sharedIDs = true
                s.sandbox.uid = UInt32(uid ?? Int(s.sandbox.uid))
                s.sandbox.gid = UInt32(gid ?? Int(s.sandbox.gid))
            }
            if let range = sr.value("id_range") {
                guard !s.sandbox.sharedIDs else {
                    throw ConfigError(sr.child("id_range"), "give either uid/gid (shared by every VM of this config) or id_range (an id per VM), not both")
                }
                var rr = try ObjectReader(range, path: sr.child("id_range"))
                let first = try rr.integer("first", in: 1...Int(UInt32.max - 1)) ?? Int(s.sandbox.idRange.lowerBound)
                let count = try rr.integer("count", in: 1...Int(UInt32.max - 1)) ?? s.sandbox.idRange.count
                try rr.finish()
                guard first + count <= Int(UInt32.max) else {
                    throw ConfigError(rr.child("count"), "first + count must stay below \(UInt32.max) ((uid_t)-1 means \"unchanged\")")
                }
                s.sandbox.idRange = UInt32(first)..<UInt32(first + count)
            }
            // The policies decide what a helper that runs guest-controlled code may call; a config file (which may come
            // from someone else) must not hand it one that allows ioctl or execve.
            if sr.value("policy_dir") != nil {
                throw ConfigError(sr.child("policy_dir"), "not allowed: the seccomp policies are built into vmm, and a config may not choose what its helpers can call (to try policies under development: vmm run --unsafe-policy-dir DIR)")
            }
            try sr.finish()
        }
        s.faultReportPath = try r.string("fault_report")
        if let restart = r.value("device_restart") { s.deviceRestart = try deviceRestart(restart, path: r.child("device_restart")) }
        if let faults = r.value("fault_injection") {
            guard case .array(let items) = faults else { throw ConfigError(r.child("fault_injection"), "expected an array of faults") }
            s.faults = try items.enumerated().map { (i, item) throws(ConfigError) in
                try fault(item, path: "\(r.child("fault_injection"))[\(i)]")
            }
        }
        try r.finish()
        return s
    }
}
