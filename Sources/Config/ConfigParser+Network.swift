/// Firecracker's "network-interfaces" (virtio-net on a tap) and "vsock".
extension ConfigParser {
    static func networkInterfaces(_ v: JSONValue) throws(ConfigError) -> [VMConfig.NetworkInterface] {
        guard case .array(let items) = v else { throw ConfigError("network-interfaces", "expected an array") }
        var interfaces: [VMConfig.NetworkInterface] = []
        for (i, item) in items.enumerated() {
            let path = "network-interfaces[\(i)]"
            var interface = try networkInterface(item, path: path)
            interface.configIndex = i
            if interfaces.contains(where: { $0.ifaceID == interface.ifaceID }) {
                throw ConfigError("\(path).iface_id", "\"\(interface.ifaceID)\" is used twice")
            }
            if let other = interfaces.first(where: { $0.hostDevName == interface.hostDevName }) {
                throw ConfigError("\(path).host_dev_name", "\"\(interface.hostDevName)\" is the tap of \"\(other.ifaceID)\" already")
            }
            interfaces.append(interface)
        }
        return interfaces
    }

    /// One entry of "network-interfaces" (also an API body of `PUT /network-interfaces/{id}`).
    static func networkInterface(_ item: JSONValue, path: String) throws(ConfigError) -> VMConfig.NetworkInterface {
        var r = try ObjectReader(item, path: path)
        guard let id = try r.string("iface_id") else { throw ConfigError(r.child("iface_id"), "missing") }
        // Firecracker's rule for resource ids.
        guard !id.isEmpty, id.utf8.count <= 64, id.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "_") }) else {
            throw ConfigError(r.child("iface_id"), "\"\(id)\" must be 1 to 64 letters, digits or underscores")
        }
        guard let name = try r.string("host_dev_name") else {
            throw ConfigError(r.child("host_dev_name"), "missing (the name of an existing tap device)")
        }
        // IFNAMSIZ is 16 with the terminating NUL; the kernel refuses '/', ':' and white space in names.
        guard !name.isEmpty, name.utf8.count <= 15, name != ".", name != "..",
              name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }) else {
            throw ConfigError(r.child("host_dev_name"), "\"\(name)\" is not an interface name (1 to 15 printable characters, no '/', ':' or spaces)")
        }
        var interface = VMConfig.NetworkInterface(ifaceID: id, hostDevName: name)
        if let text = try r.string("guest_mac") {
            guard let mac = macAddress(text) else {
                throw ConfigError(r.child("guest_mac"), "\"\(text)\" is not a MAC address (six hex pairs separated by ':')")
            }
            guard mac[0] & 1 == 0 else { throw ConfigError(r.child("guest_mac"), "\(text) is a multicast address; a NIC needs a unicast one") }
            guard mac.contains(where: { $0 != 0 }) else { throw ConfigError(r.child("guest_mac"), "\(text) is the zero address") }
            interface.guestMAC = mac
        }
        try r.rejectIfSet("rx_rate_limiter", "rate limiting of network interfaces")
        try r.rejectIfSet("tx_rate_limiter", "rate limiting of network interfaces")
        try r.finish()
        return interface
    }

    /// The longest `uds_path`: a Unix socket path (107 bytes) with room for `_<port>` (up to 11 more).
    static let maxVsockPathBytes = 96

    static func vsock(_ v: JSONValue, path: String = "vsock") throws(ConfigError) -> VMConfig.Vsock {
        var r = try ObjectReader(v, path: path)
        // 0 and 1 are reserved, 2 is the host, -1 is VMADDR_CID_ANY.
        guard let cid = try r.integer("guest_cid", in: 3...Int(UInt32.max - 1)) else {
            throw ConfigError(r.child("guest_cid"), "missing (the guest's context id, 3 or more)")
        }
        guard let udsPath = try r.string("uds_path") else { throw ConfigError(r.child("uds_path"), "missing (the Unix socket for the host side)") }
        guard !udsPath.isEmpty, udsPath.utf8.count <= maxVsockPathBytes, !udsPath.utf8.contains(0) else {
            throw ConfigError(r.child("uds_path"), "must be 1 to \(maxVsockPathBytes) bytes (a Unix socket path, with room for \"_<port>\")")
        }
        _ = try r.string("vsock_id")  // Firecracker's former device id: accepted, meaningless with one device
        try r.finish()
        return VMConfig.Vsock(guestCID: UInt32(cid), udsPath: udsPath)
    }

    static func macAddress(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var mac: [UInt8] = []
        for p in parts {
            guard p.utf8.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            mac.append(b)
        }
        return mac
    }

    private static func isAlphanumeric(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7a)
    }
}
