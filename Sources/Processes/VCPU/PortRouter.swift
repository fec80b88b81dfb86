/// Which device channel serves a guest-physical MMIO address: a short list of page ranges.
struct MMIORouter {
    private let routes: [MMIORouteSpec]
    init(routes: [MMIORouteSpec]) { self.routes = routes.filter { $0.size > 0 && $0.base <= UInt64.max - $0.size } }

    func route(for address: UInt64) -> MMIORouteSpec? {
        routes.first { address >= $0.base && address - $0.base < $0.size }
    }
}

/// Which device channel serves each of the 65536 ports: one table lookup per port exit.
struct PortRouter {
    static let none: UInt8 = 0xff
    private var table = [UInt8](repeating: PortRouter.none, count: 65536)

    init(routes: [PortRouteSpec]) {
        for r in routes where r.first <= r.last && r.device < Int(Self.none) {
            for port in Int(r.first)...Int(r.last) { table[port] = UInt8(r.device) }
        }
    }

    /// The device index for `port`, nil when no device answers it.
    @inline(__always)
    func device(for port: UInt16) -> Int? {
        let d = table[Int(port)]
        return d == Self.none ? nil : Int(d)
    }
}
