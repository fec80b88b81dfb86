/// The "vmm.device_restart" and "vmm.fault_injection" sections, and `vmm run --inject-fault`.
extension ConfigParser {
    static func deviceRestart(_ v: JSONValue, path: String) throws(ConfigError) -> VMConfig.DeviceRestart {
        var r = try ObjectReader(v, path: path)
        var d = VMConfig.DeviceRestart()
        d.maxRestarts = try r.integer("max_restarts", in: 0...1_000_000) ?? d.maxRestarts
        d.windowMs = try r.integer("window_ms", in: 1...86_400_000) ?? d.windowMs
        d.backoffMs = try r.integer("backoff_ms", in: 0...60_000) ?? d.backoffMs
        d.maxBackoffMs = try r.integer("max_backoff_ms", in: 0...600_000) ?? d.maxBackoffMs
        d.hangTimeoutMs = try r.integer("hang_timeout_ms", in: 10...600_000) ?? d.hangTimeoutMs
        d.standby = try r.bool("standby") ?? d.standby
        if let critical = r.value("critical") {
            guard case .array(let items) = critical else { throw ConfigError(r.child("critical"), "expected an array of device names") }
            d.critical = try items.enumerated().map { (i, item) throws(ConfigError) in
                guard case .string(let name) = item else { throw ConfigError("\(r.child("critical"))[\(i)]", "expected a device name") }
                return name
            }
        }
        if d.maxBackoffMs < d.backoffMs {
            throw ConfigError(r.child("max_backoff_ms"), "\(d.maxBackoffMs) is below backoff_ms (\(d.backoffMs))")
        }
        try r.finish()
        return d
    }

    static func fault(_ v: JSONValue, path: String) throws(ConfigError) -> VMConfig.Fault {
        var r = try ObjectReader(v, path: path)
        guard let device = try r.string("device") else { throw ConfigError(r.child("device"), "missing (the device process: pio, irqchip, virtio-blk0, ...)") }
        guard let actionName = try r.string("action") else { throw ConfigError(r.child("action"), "missing (kill, stop or crash)") }
        guard let action = VMConfig.Fault.Action(rawValue: actionName) else {
            throw ConfigError(r.child("action"), "\"\(actionName)\" is not one of kill, stop, crash")
        }
        var f = VMConfig.Fault(device: device, action: action)
        f.afterMs = try r.integer("after_ms", in: 0...86_400_000) ?? f.afterMs
        f.afterRequests = try r.integer("after_requests", in: 1...Int(Int32.max))
        f.everyMs = try r.integer("every_ms", in: 1...86_400_000)
        f.count = try r.integer("count", in: 1...1_000_000) ?? f.count
        try r.finish()
        return f
    }

    /// `--inject-fault DEVICE:ACTION[,KEY=VALUE...]` with the keys of a "vmm.fault_injection" entry, e.g.
    /// `pio:kill,every_ms=50,count=100`.
    public static func fault(commandLine text: String) throws(ConfigError) -> VMConfig.Fault {
        let path = "--inject-fault \(text)"
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        let head = parts[0].split(separator: ":", omittingEmptySubsequences: false)
        guard head.count == 2, !head[0].isEmpty else { throw ConfigError(path, "expected DEVICE:ACTION[,KEY=VALUE...], e.g. pio:kill,every_ms=50,count=100") }
        var fields: [(key: String, value: JSONValue)] = [("device", .string(String(head[0]))), ("action", .string(String(head[1])))]
        for part in parts.dropFirst() {
            let kv = part.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let n = Int(kv[1]) else { throw ConfigError(path, "\"\(part)\" is not KEY=NUMBER") }
            fields.append((String(kv[0]), .number(String(n))))
        }
        return try fault(.object(fields), path: path)
    }

    /// Restart and fault settings name device processes; a name that is not one of this VM's is an error here, not
    /// a fault that silently never fires.
    public static func checkDeviceNames(_ config: VMConfig) throws(ConfigError) {
        let known = deviceNames(config)
        for (i, name) in config.vmm.deviceRestart.critical.enumerated() where !known.contains(name) {
            throw ConfigError("vmm.device_restart.critical[\(i)]", "\"\(name)\" is not a device process of this VM (\(known.joined(separator: ", ")))")
        }
        for (i, f) in config.vmm.faults.enumerated() where !known.contains(f.device) {
            throw ConfigError("vmm.fault_injection[\(i)].device", "\"\(f.device)\" is not a device process of this VM (\(known.joined(separator: ", ")))")
        }
    }

    /// The device processes a VM with this config has, by the names vmm uses for them.
    public static func deviceNames(_ config: VMConfig) -> [String] {
        ["pio", "irqchip"] + config.drives.indices.map { "virtio-blk\($0)" } + config.networkInterfaces.indices.map { "virtio-net\($0)" }
            + (config.vsock != nil ? ["virtio-vsock0"] : []) + (config.entropy != nil ? ["virtio-rng0"] : [])
    }
}
