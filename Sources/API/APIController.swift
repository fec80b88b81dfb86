import Config
import Processes
import Synchronization

/// An HTTP response of the API: a status and, for errors, Firecracker's `{"fault_message": "..."}`.
public struct APIResponse: Error, Sendable, Equatable {
    public var status: Int
    public var body: String?

    public static let noContent = APIResponse(status: 204, body: nil)
    public static func ok(_ json: JSONValue) -> APIResponse { APIResponse(status: 200, body: json.text) }
    public static func fault(_ status: Int, _ message: String) -> APIResponse {
        APIResponse(status: status, body: JSONValue.object([("fault_message", .string(message))]).text)
    }
    public static func badRequest(_ message: String) -> APIResponse { fault(400, message) }
}

/// Firecracker's API: routing (404 for an unknown path, 405 for a method a path does not have), the configuration
/// the PUTs build up before InstanceStart (each body checked on arrival by the config file's reader for that
/// section, so the errors name the same fields; InstanceStart parses the whole as a config file), and the requests
/// that need the running VM, which go to the supervisor through `VMControl`. Runs on the API server's thread.
public final class APIController: Sendable {
    let control: VMControl
    /// The instance id `GET /` reports (Firecracker's `--id`; vmm has one VM per process).
    let instanceID: String
    public static let version = "0.1.0"

    /// The configuration before InstanceStart: each section's last accepted body (drives and network interfaces
    /// by id, in the order they were first put), and the config the VM runs with once started.
    private struct Document: Sendable {
        var sections: [(key: String, value: JSONValue)] = []
        var drives: [(id: String, body: JSONValue)] = []
        var networkInterfaces: [(id: String, body: JSONValue)] = []
        var running: VMConfig?
        var starting = false
    }
    private let document: Mutex<Document>

    /// `running`: the config the VM was started with from a file (`--config-file` with `--api-sock`): the API then
    /// only controls it.
    public init(control: VMControl, running: VMConfig?, instanceID: String = "anonymous-instance") {
        self.control = control
        self.instanceID = instanceID
        document = Mutex(Document(running: running))
    }

    static let notAfterStart = "The requested operation is not supported after starting the microVM."
    static let notBeforeStart = "The requested operation is not supported before starting the microVM."

    /// Handles one request; `respond` is called once, on any thread.
    public func handle(method: String, uri: String, body: [UInt8], respond: @escaping @Sendable (APIResponse) -> Void) {
        control.apiRequests.add(1, ordering: .relaxed)
        let path = String(uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        let parts = path.split(separator: "/").map(String.init)
        func allow(_ methods: Set<String>) -> Bool {
            if methods.contains(method) { return true }
            respond(.fault(405, "Invalid request method \(method) for \(path): use \(methods.sorted().joined(separator: " or "))"))
            return false
        }
        switch parts {
        case []:
            guard allow(["GET"]) else { return }
            respond(.ok(.object([("id", .string(instanceID)), ("state", .string(control.state.rawValue)),
                                 ("vmm_version", .string(Self.version)), ("app_name", .string("vmm"))])))
        case ["version"]:
            guard allow(["GET"]) else { return }
            respond(.ok(.object([("firecracker_version", .string(Self.version))])))
        case ["machine-config"]:
            guard allow(["GET", "PUT", "PATCH"]) else { return }
            if method == "GET" { return respond(machineConfig()) }
            respond(configure("machine-config", id: nil, method: method, body: body))
        case ["boot-source"], ["cpu-config"], ["logger"], ["metrics"], ["vsock"], ["entropy"], ["balloon"], ["vmm"]:
            guard allow(["PUT"]) else { return }
            respond(configure(parts[0], id: nil, method: method, body: body))
        case ["mmds", "config"]:
            guard allow(["PUT"]) else { return }
            respond(configure("mmds-config", id: nil, method: method, body: body))
        case let p where p.count == 2 && (p[0] == "drives" || p[0] == "network-interfaces"):
            guard allow(["PUT", "PATCH"]) else { return }
            if parts[0] == "drives", method == "PATCH", patchRunningDrive(parts[1], body: body, respond: respond) { return }
            respond(configure(parts[0], id: parts[1], method: method, body: body))
        case ["actions"]:
            guard allow(["PUT"]) else { return }
            action(body, respond: respond)
        case ["vm"]:
            guard allow(["PATCH"]) else { return }
            vmState(body, respond: respond)
        case ["vm", "config"]:
            guard allow(["GET"]) else { return }
            respond(.ok(vmConfig()))
        case ["vmm", "devices"]:
            guard allow(["GET"]) else { return }
            control.submit(.devices) { reply in respond(Self.response(reply) { devices in
                .object([("devices", .array(devices.map { d in
                    .object([("name", .string(d.name)), ("pid", .number("\(d.pid)")), ("restarts", .number("\(d.restarts)")),
                             ("state", .string(d.state)), ("handled_requests", .number("\(d.handledRequests)"))])
                }))])
            }) }
        default:
            respond(.fault(404, "Invalid request: no such resource \(path)"))
        }
    }

    static func response(_ reply: VMControl.Reply, devices: ([VMControl.Device]) -> JSONValue = { _ in .null }) -> APIResponse {
        switch reply {
        case .done: return .noContent
        case .devices(let list): return .ok(devices(list))
        case .refused(let why): return .badRequest(why)
        }
    }

    static func parseBody(_ body: [UInt8]) -> Result<JSONValue, APIResponse> {
        guard !body.isEmpty else { return .failure(.badRequest("The request has no body; a JSON object is expected")) }
        do { return .success(try JSONParser.parse(body)) } catch {
            return .failure(.badRequest("The request body is not valid JSON: \("\(error)")"))
        }
    }

    /// A configuration PUT or PATCH: before InstanceStart, checked by the section's reader and kept.
    private func configure(_ section: String, id: String?, method: String, body: [UInt8]) -> APIResponse {
        let json: JSONValue
        switch Self.parseBody(body) {
        case .success(let j): json = j
        case .failure(let r): return r
        }
        return document.withLock { d -> APIResponse in
            if d.running != nil || d.starting {
                if method == "PATCH", section == "network-interfaces" {
                    return .badRequest("not supported: changing a network interface of a running VM (vmm does not rate-limit)")
                }
                return .badRequest(Self.notAfterStart)
            }
            do {
                switch (section, method) {
                case ("drives", "PATCH"), ("network-interfaces", "PATCH"):
                    return .badRequest(Self.notBeforeStart)
                case ("machine-config", "PATCH"):
                    // Firecracker's PATCH changes the fields given; the rest keep their value (or default).
                    guard case .object(let changes) = json else { return .badRequest("machine-config: expected an object, found \(json.kind)") }
                    var merged: [(key: String, value: JSONValue)]
                    if case .object(let current)? = d.sections.first(where: { $0.key == section })?.value { merged = current } else {
                        merged = [("vcpu_count", .number("1")), ("mem_size_mib", .number("128"))]
                    }
                    for (k, v) in changes {
                        if let i = merged.firstIndex(where: { $0.key == k }) { merged[i].value = v } else { merged.append((k, v)) }
                    }
                    try ConfigParser.checkSection(section, .object(merged))
                    Self.set(&d.sections, section, .object(merged))
                case ("drives", _):
                    try ConfigParser.checkSection(section, id: id, json)
                    if let i = d.drives.firstIndex(where: { $0.id == id }) { d.drives[i].body = json } else { d.drives.append((id ?? "", json)) }
                case ("network-interfaces", _):
                    try ConfigParser.checkSection(section, id: id, json)
                    if let i = d.networkInterfaces.firstIndex(where: { $0.id == id }) { d.networkInterfaces[i].body = json } else {
                        d.networkInterfaces.append((id ?? "", json))
                    }
                default:
                    try ConfigParser.checkSection(section, json)
                    Self.set(&d.sections, section, json)
                }
                return .noContent
            } catch {
                return .badRequest("\(error)")
            }
        }
    }

    /// `PATCH /drives/{id}` on a running VM, as Firecracker has it: a new backing file (`path_on_host`) for the
    /// drive, which the guest sees as a capacity change. The drive as it runs with the patch applied is checked by
    /// the config parser (so a missing file, a read-write drive on a read-only file or a rate limiter get its
    /// messages); the supervisor then opens and locks the file and hands it to the drive's process. False when the VM
    /// is not running (the caller answers as before InstanceStart).
    private func patchRunningDrive(_ id: String, body: [UInt8], respond: @escaping @Sendable (APIResponse) -> Void) -> Bool {
        let outcome = document.withLock { d -> Result<String?, APIResponse>? in
            guard let running = d.running else { return d.starting ? .failure(.badRequest(Self.notAfterStart)) : nil }
            let json: JSONValue
            switch Self.parseBody(body) {
            case .success(let j): json = j
            case .failure(let r): return .failure(r)
            }
            guard case .object(let changes) = json else { return .failure(.badRequest("drives[\(id)]: expected an object, found \(json.kind)")) }
            guard let index = running.drives.firstIndex(where: { $0.driveID == id }),
                  case .array(let drives)? = running.firecrackerJSON["drives"], case .object(var merged) = drives[index] else {
                return .failure(.badRequest("drives[\(id)]: the running VM has no drive \"\(id)\""))
            }
            for (key, value) in changes {
                guard ["drive_id", "path_on_host", "rate_limiter"].contains(key) else {
                    return .failure(.badRequest("drives[\(id)].\(key): cannot be changed on a running VM (drive_id, path_on_host and rate_limiter can)"))
                }
                if let i = merged.firstIndex(where: { $0.key == key }) { merged[i].value = value } else { merged.append((key, value)) }
            }
            do { try ConfigParser.checkSection("drives", id: id, .object(merged)) } catch { return .failure(.badRequest("\(error)")) }
            guard case .string(let path)? = changes.first(where: { $0.key == "path_on_host" })?.value else { return .success(nil) }
            return .success(path)
        }
        switch outcome {
        case nil: return false
        case .failure(let r)?: respond(r)
        case .success(nil)?: respond(.noContent)  // nothing to change
        case .success(let path?)?:
            control.submit(.updateDrive(id: id, path: path)) { reply in
                if case .done = reply {
                    self.document.withLock { d in
                        if let i = d.running?.drives.firstIndex(where: { $0.driveID == id }) { d.running?.drives[i].pathOnHost = path }
                    }
                }
                respond(Self.response(reply))
            }
        }
        return true
    }

    private static func set(_ sections: inout [(key: String, value: JSONValue)], _ key: String, _ value: JSONValue) {
        if let i = sections.firstIndex(where: { $0.key == key }) { sections[i].value = value } else { sections.append((key, value)) }
    }

    /// The configuration as a config file: the sections put so far (InstanceStart parses exactly this).
    private static func assemble(_ d: Document) -> JSONValue {
        var members = d.sections
        if !d.drives.isEmpty { members.append(("drives", .array(d.drives.map(\.body)))) }
        if !d.networkInterfaces.isEmpty { members.append(("network-interfaces", .array(d.networkInterfaces.map(\.body)))) }
        return .object(members)
    }

    private func machineConfig() -> APIResponse {
        document.withLock { d in
            if let running = d.running { return .ok(running.firecrackerJSON["machine-config"] ?? .null) }
            do { return .ok(try ConfigParser.machineJSON(d.sections.first { $0.key == "machine-config" }?.value)) } catch {
                return .badRequest("\(error)")
            }
        }
    }

    /// The running VM's config in Firecracker's format with every default written out; before InstanceStart, what
    /// has been put so far.
    private func vmConfig() -> JSONValue {
        document.withLock { d in d.running?.firecrackerJSON ?? Self.assemble(d) }
    }

    private func action(_ body: [UInt8], respond: @escaping @Sendable (APIResponse) -> Void) {
        let json: JSONValue
        switch Self.parseBody(body) {
        case .success(let j): json = j
        case .failure(let r): return respond(r)
        }
        let field: String?
        do { field = try ConfigParser.soleString(json, section: "actions", key: "action_type") } catch { return respond(.badRequest("\(error)")) }
        guard let type = field else {
            return respond(.badRequest("actions.action_type: missing (InstanceStart, SendCtrlAltDel or FlushMetrics)"))
        }
        switch type {
        case "InstanceStart":
            let outcome = document.withLock { d -> Result<VMConfig, APIResponse> in
                guard d.running == nil, !d.starting else { return .failure(.badRequest(Self.notAfterStart)) }
                do {
                    let config = try ConfigParser.parse(json: Self.assemble(d))
                    d.starting = true
                    return .success(config)
                } catch { return .failure(.badRequest("\(error)")) }
            }
            switch outcome {
            case .failure(let r): respond(r)
            case .success(let config):
                control.requestStart(config) { reply in
                    self.document.withLock { d in
                        d.starting = false
                        if case .done = reply { d.running = config }
                    }
                    respond(Self.response(reply))
                }
            }
        case "SendCtrlAltDel":
            control.submit(.sendCtrlAltDel) { respond(Self.response($0)) }
        case "FlushMetrics":
            control.submit(.flushMetrics) { respond(Self.response($0)) }
        default:
            respond(.badRequest("actions.action_type: \"\(type)\" is not one of InstanceStart, SendCtrlAltDel, FlushMetrics"))
        }
    }

    private func vmState(_ body: [UInt8], respond: @escaping @Sendable (APIResponse) -> Void) {
        let json: JSONValue
        switch Self.parseBody(body) {
        case .success(let j): json = j
        case .failure(let r): return respond(r)
        }
        let state: String?
        do { state = try ConfigParser.soleString(json, section: "vm", key: "state") } catch { return respond(.badRequest("\(error)")) }
        switch state {
        case "Paused": control.submit(.pause) { respond(Self.response($0)) }
        case "Resumed": control.submit(.resume) { respond(Self.response($0)) }
        default: respond(.badRequest("vm.state: expected \"Paused\" or \"Resumed\""))
        }
    }
}
