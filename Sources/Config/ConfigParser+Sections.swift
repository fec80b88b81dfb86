import Glibc

/// The sections Firecracker's file formats add (`cpu-config` as a template file's path, `metrics`), the sections
/// refused for now, and the entry points the API uses: a `PUT` body is checked by the same reader as the config
/// file's section, so its errors name the same fields.
extension ConfigParser {
    public static func parse(json: JSONValue) throws(ConfigError) -> VMConfig {
        try parse(Array(json.text.utf8))
    }

    /// Firecracker's config file names a CPU template file (`"cpu-config": "template.json"`); vmm also takes the
    /// template inline, as the API's `PUT /cpu-config` body is.
    static func cpuConfigOrTemplateFile(_ v: JSONValue) throws(ConfigError) -> [VMConfig.CPUIDRule] {
        guard case .string(let file) = v else { return try cpuConfig(v) }
        let path = try readableFile(file, at: "cpu-config")
        guard let bytes = readFile(path) else { throw ConfigError("cpu-config", "cannot read \(file): \(String(cString: strerror(errno)))") }
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch { throw ConfigError("cpu-config", "\(file): \(error.description)") }
        return try cpuConfig(json, path: "cpu-config(\(file))")
    }

    /// `metrics`: where the JSON lines go. The file or FIFO must exist (as in Firecracker): vmm opens it, never
    /// creates it.
    static func metrics(_ v: JSONValue) throws(ConfigError) -> VMConfig.Metrics {
        var r = try ObjectReader(v, path: "metrics")
        guard let path = try r.string("metrics_path") else { throw ConfigError(r.child("metrics_path"), "missing") }
        var st = stat()
        guard !path.isEmpty, stat(path, &st) == 0 else {
            throw ConfigError(r.child("metrics_path"), "\(path): \(path.isEmpty ? "empty path" : String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG || st.st_mode & S_IFMT == S_IFIFO else {
            throw ConfigError(r.child("metrics_path"), "\(path) is neither a regular file nor a FIFO")
        }
        guard access(path, W_OK) == 0 else { throw ConfigError(r.child("metrics_path"), "\(path): \(String(cString: strerror(errno)))") }
        try r.finish()
        return VMConfig.Metrics(metricsPath: path)
    }

    /// Sections whose devices vmm does not have (yet): refused with the reason, whether in a file or through the API.
    static func rejectUnimplementedSections(_ top: inout ObjectReader) throws(ConfigError) {
        try top.rejectIfSet("balloon", "no balloon device")
        try top.rejectIfSet("mmds-config", "no metadata service")
    }

    /// Checks one section given on its own (an API body) with the config file's reader for it. `id` names the
    /// device for the per-device sections (`drives`, `network-interfaces`); the error paths then read
    /// `drives[ID].field`.
    public static func checkSection(_ name: String, id: String? = nil, _ body: JSONValue) throws(ConfigError) {
        switch name {
        case "boot-source": _ = try bootSource(body)
        case "machine-config": _ = try machine(body)
        case "cpu-config": _ = try cpuConfig(body)
        case "logger": _ = try logger(body)
        case "metrics": _ = try metrics(body)
        case "entropy": _ = try entropy(body)
        case "vmm": _ = try vmmSettings(body)
        case "drives":
            let path = "drives[\(id ?? "")]"
            let drive = try drive(body, path: path, index: 0)
            if let id, drive.driveID != id {
                throw ConfigError("\(path).drive_id", "\"\(drive.driveID)\" differs from the id in the request's path (\"\(id)\")")
            }
        case "vsock": _ = try vsock(body)
        case "network-interfaces":
            let path = "network-interfaces[\(id ?? "")]"
            let interface = try networkInterface(body, path: path)
            if let id, interface.ifaceID != id {
                throw ConfigError("\(path).iface_id", "\"\(interface.ifaceID)\" differs from the id in the request's path (\"\(id)\")")
            }
        default:
            // Sections a file may have but vmm refuses: the same reason as in a file.
            var top = try ObjectReader(.object([(name, body)]), path: "")
            try rejectUnimplementedSections(&top)
            try top.finish()
        }
    }

    /// The one string member `key` of a small API body (`PUT /actions`, `PATCH /vm`), read as a config section is:
    /// an object, the member a string, no other member. nil when it is absent.
    public static func soleString(_ body: JSONValue, section: String, key: String) throws(ConfigError) -> String? {
        var r = try ObjectReader(body, path: section)
        let value = try r.string(key)
        try r.finish()
        return value
    }

    /// `machine-config` with Firecracker's defaults filled in, as `GET /machine-config` reports it.
    public static func machineJSON(_ body: JSONValue?) throws(ConfigError) -> JSONValue {
        let m = try body.map { (b) throws(ConfigError) in try machine(b) } ?? VMConfig.Machine()
        return m.json
    }
}

extension VMConfig.Machine {
    var json: JSONValue {
        .object([("vcpu_count", .number("\(vcpuCount)")), ("mem_size_mib", .number("\(memSizeMiB)")),
                 ("smt", .bool(smt)), ("track_dirty_pages", .bool(trackDirtyPages)), ("huge_pages", .string("None"))])
    }
}

extension VMConfig {
    /// This VM in Firecracker's config-file format (what `GET /vm/config` returns): the sections Firecracker has,
    /// with every default written out, so that the same VM reads the same whether it came from a file or the API.
    /// vmm's own `vmm` section is left out.
    public var firecrackerJSON: JSONValue {
        func hex(_ n: UInt32) -> JSONValue { .string("0x" + String(n, radix: 16)) }
        func bitmap(_ r: CPUIDRule) -> String {
            "0b" + String((0..<32).reversed().map { bit -> Character in
                r.clear >> bit & 1 == 1 ? "0" : r.set >> bit & 1 == 1 ? "1" : "x"
            })
        }
        let boot: JSONValue = .object([("kernel_image_path", .string(bootSource.kernelImagePath)),
                                       ("initrd_path", bootSource.initrdPath.map(JSONValue.string) ?? .null),
                                       ("boot_args", .string(bootSource.bootArgs))])
        let cpu: JSONValue = cpuid.isEmpty ? .null : .object([("cpuid_modifiers", .array(cpuid.map { r in
            .object([("leaf", hex(r.leaf)), ("subleaf", hex(r.subleaf)), ("flags", .number("0")),
                     ("modifiers", .array([.object([("register", .string(r.register)), ("bitmap", .string(bitmap(r)))])]))])
        }))])
        let disks: JSONValue = .array(drives.map { d in
            .object([("drive_id", .string(d.driveID)), ("path_on_host", .string(d.pathOnHost)),
                     ("is_root_device", .bool(d.isRootDevice)), ("is_read_only", .bool(d.isReadOnly)),
                     ("partuuid", d.partUUID.map(JSONValue.string) ?? .null), ("cache_type", .string(d.cacheType.rawValue)),
                     ("io_engine", .string("Sync"))])
        })
        let log: JSONValue = .object([("log_path", logger.logPath.map(JSONValue.string) ?? .null), ("level", .string(logger.level.rawValue)),
                                      ("show_level", .bool(logger.showLevel ?? false)), ("show_log_origin", .bool(logger.showLogOrigin ?? false))])
        return .object([
            ("boot-source", boot), ("machine-config", machine.json), ("cpu-config", cpu), ("drives", disks),
            ("network-interfaces", .array(networkInterfaces.map { n in
                .object([("iface_id", .string(n.ifaceID)), ("host_dev_name", .string(n.hostDevName)),
                         ("guest_mac", n.guestMAC.map { mac in .string(mac.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: ":")) } ?? .null),
                         ("rx_rate_limiter", .null), ("tx_rate_limiter", .null)])
            })), ("vsock", vsock.map { .object([("guest_cid", .number("\($0.guestCID)")), ("uds_path", .string($0.udsPath))]) } ?? .null), ("entropy", entropy == nil ? .null : .object([])),
            ("balloon", .null), ("logger", log),
            ("metrics", metrics.map { .object([("metrics_path", .string($0.metricsPath))]) } ?? .null),
            ("mmds-config", .null),
        ])
    }
}

extension JSONValue {
    /// Compact JSON text.
    public var text: String {
        var out: [UInt8] = []
        write(into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Written into one buffer, strings byte by byte: the role specs carry policy texts of kilobytes, and building
    /// the text by string concatenation, a Unicode scalar at a time, cost the supervisor most of a millisecond per
    /// VM start.
    private func write(into out: inout [UInt8]) {
        switch self {
        case .null: out += "null".utf8
        case .bool(let b): out += (b ? "true" : "false").utf8
        case .number(let n): out += n.utf8
        case .string(let s): Self.writeQuoted(s, into: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            for (i, member) in o.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeQuoted(member.key, into: &out)
                out.append(UInt8(ascii: ":"))
                member.value.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// `s` as a JSON string: quotes, backslashes and control characters escaped, everything else as it is (UTF-8
    /// bytes at or above 0x20 are never part of an escape).
    private static func writeQuoted(_ s: String, into out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.reserveCapacity(out.count + s.utf8.count + 2)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20: out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xf)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The member `key` of an object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }
}
