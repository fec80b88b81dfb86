import XCTest
@testable import Config

final class ConfigParserTests: XCTestCase {
    var kernel: String!

    override func setUpWithError() throws {
        kernel = NSTemporaryDirectory() + "/config-test-kernel-\(getpid())"
        FileManager.default.createFile(atPath: kernel, contents: Data([0x7f, 0x45, 0x4c, 0x46]))
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: kernel) }

    func parse(_ text: String) throws -> VMConfig { try ConfigParser.parse(Array(text.utf8)) }

    func assertError(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(text), file: file, line: line) {
            XCTAssertEqual(($0 as? ConfigError)?.description, expected, file: file, line: line)
        }
    }

    var boot: String { #""boot-source": {"kernel_image_path": "\#(kernel!)", "boot_args": "console=ttyS0"}"# }

    func testFullFirecrackerStyleConfig() throws {
        let c = try parse("""
        {
          \(boot),
          "machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true,
                             "huge_pages": "None", "cpu_template": "None"},
          "cpu-config": {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
              "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxx0xxxxxxxxxxxxxxxxxxx1xxxx0"}]}]},
          "drives": [], "network-interfaces": [], "vsock": null, "entropy": null, "balloon": null,
          "logger": {"level": "Info", "show_level": true},
          "metrics": null, "mmds-config": null,
          "vmm": {"serial": {"output": "/tmp/console.log", "input": "none"}, "spin_budget_us": 10,
                  "device_timeout_ms": 500, "placement": {"vcpu": [0], "devices": [1]}}
        }
        """)
        XCTAssertEqual(c.bootSource.kernelImagePath, kernel)
        XCTAssertEqual(c.bootSource.bootArgs, "console=ttyS0")
        XCTAssertNil(c.bootSource.initrdPath)
        XCTAssertEqual(c.machine.memSizeMiB, 256)
        XCTAssertTrue(c.machine.trackDirtyPages)
        XCTAssertEqual(c.cpuid, [.init(leaf: 1, subleaf: 0, register: "ecx", clear: 0x0200_0001, set: 0x20)])
        XCTAssertEqual(c.logger.level, .info)
        XCTAssertEqual(c.vmm.serialOutput, .file("/tmp/console.log"))
        XCTAssertFalse(c.vmm.serialInputFromStdin)
        XCTAssertEqual(c.vmm.spinBudgetMicroseconds, 10)
        XCTAssertEqual(c.vmm.deviceTimeoutMs, 500)
        XCTAssertEqual(c.vmm.vcpuCPUs, [0])
        XCTAssertEqual(c.vmm.deviceCPUs, [1])
    }

    func testKernelOrInitrdLargerThanGuestRAMIsRefused() throws {
        // 2 MiB of RAM; the kernel fits exactly, an initrd one byte larger does not.
        let big = NSTemporaryDirectory() + "/config-test-initrd-\(getpid())"
        FileManager.default.createFile(atPath: big, contents: Data(count: (2 << 20) + 1))
        defer { try? FileManager.default.removeItem(atPath: big) }
        let fits = NSTemporaryDirectory() + "/config-test-kernel-2m-\(getpid())"
        FileManager.default.createFile(atPath: fits, contents: Data(count: 2 << 20))
        defer { try? FileManager.default.removeItem(atPath: fits) }
        let machine = #""machine-config": {"mem_size_mib": 2}"#
        XCTAssertNoThrow(try parse(#"{"boot-source": {"kernel_image_path": "\#(fits)"}, \#(machine)}"#))
        assertError(#"{"boot-source": {"kernel_image_path": "\#(big)"}, \#(machine)}"#,
                    "boot-source.kernel_image_path: \(big) has \((2 << 20) + 1) bytes, more than guest RAM (machine-config.mem_size_mib 2 MiB)")
        assertError(#"{"boot-source": {"kernel_image_path": "\#(fits)", "initrd_path": "\#(big)"}, \#(machine)}"#,
                    "boot-source.initrd_path: \(big) has \((2 << 20) + 1) bytes, more than guest RAM (machine-config.mem_size_mib 2 MiB)")
    }

    func testAConfigCannotChooseTheSeccompPolicies() {
        assertError(#"{\#(boot), "vmm": {"sandbox": {"policy_dir": "/tmp/permissive"}}}"#,
                    "vmm.sandbox.policy_dir: not allowed: the seccomp policies are built into vmm, and a config may not choose what its helpers can call (to try policies under development: vmm run --unsafe-policy-dir DIR)")
    }

    func testBadJSONNamesLineAndColumn() {
        assertError("{\n  \"boot-source\": {,}\n}", "(file): invalid JSON at line 2, column 19: expected a string key")
        assertError("{\"a\": 1,}", "(file): invalid JSON at line 1, column 9: expected a string key")
        assertError("{\"a\": 1, \"a\": 2}", "(file): invalid JSON at line 1, column 10: duplicate key \"a\"")
        assertError("", "(file): invalid JSON at line 1, column 1: unexpected end of input")
    }

    func testUnknownFieldsAreNamedWithTheirPath() {
        assertError("{\(boot), \"machine-config\": {\"mem_size_mib\": 64, \"vcpus\": 2}}", "machine-config.vcpus: unknown field")
        assertError("{\(boot), \"bogus\": 1}", "bogus: unknown field")
        assertError("{\(boot), \"vmm\": {\"serial\": {\"colour\": \"red\"}}}", "vmm.serial.colour: unknown field")
    }

    func testMissingKernelFile() {
        assertError(#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#,
                    "boot-source.kernel_image_path: /nonexistent/vmlinux: No such file or directory")
        assertError(#"{"boot-source": {"kernel_image_path": "/tmp"}}"#, "boot-source.kernel_image_path: /tmp is not a regular file")
        assertError(#"{"boot-source": {}}"#, "boot-source.kernel_image_path: missing")
        assertError("{}", "boot-source: missing (the kernel to boot)")
        assertError("{\(boot.replacingOccurrences(of: "}", with: ", \"initrd_path\": \"/nonexistent/initrd\"}"))}",
                    "boot-source.initrd_path: /nonexistent/initrd: No such file or directory")
    }

    func testDrivesAndEntropyInFirecrackersFormat() throws {
        let image = NSTemporaryDirectory() + "vmm-config-test-disk-\(getpid()).img"
        let data = NSTemporaryDirectory() + "vmm-config-test-data-\(getpid()).img"
        for p in [image, data] { XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: Data(count: 4096))) }
        defer { for p in [image, data] { try? FileManager.default.removeItem(atPath: p) } }
        let c = try parse(#"""
            {\#(boot), "drives": [
              {"drive_id": "data", "path_on_host": "\#(data)", "is_root_device": false, "is_read_only": true,
               "rate_limiter": null, "io_engine": "Sync"},
              {"drive_id": "rootfs", "path_on_host": "\#(image)", "is_root_device": true, "is_read_only": false,
               "partuuid": "0eaa91a0-01", "cache_type": "Writeback"}],
             "entropy": {"rate_limiter": null}}
            """#)
        XCTAssertEqual(c.drives.map(\.driveID), ["rootfs", "data"], "the root device comes first")
        XCTAssertEqual(c.drives[0].cacheType, .writeback)
        XCTAssertEqual(c.drives[0].partUUID, "0eaa91a0-01")
        XCTAssertTrue(c.drives[1].isReadOnly)
        XCTAssertEqual(c.drives[1].cacheType, .unsafe)
        XCTAssertNotNil(c.entropy)
        XCTAssertNil(try parse(#"{\#(boot), "entropy": null, "drives": []}"#).entropy)

        func drive(_ fields: String) -> String { #"{\#(boot), "drives": [{"drive_id": "d", "path_on_host": "\#(image)"\#(fields)}]}"# }
        assertError(#"{\#(boot), "drives": [{"path_on_host": "\#(image)"}]}"#, "drives[0].drive_id: missing")
        assertError(#"{\#(boot), "drives": [{"drive_id": "d"}]}"#, "drives[0].path_on_host: missing")
        assertError(drive(#", "cache_type": "Fast""#), "drives[0].cache_type: expected Unsafe or Writeback")
        assertError(drive(#", "io_engine": "Async""#),
                    "not supported yet: drives[0].io_engine (Async (io_uring); the device process does synchronous I/O)")
        assertError(drive(#", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100}}"#),
                    "not supported yet: drives[0].rate_limiter (rate limiting of drives)")
        assertError(drive(#", "partuuid": "not a uuid""#), "drives[0].partuuid: \"not a uuid\" is not a partition UUID (hex digits and dashes)")
        assertError(#"{\#(boot), "drives": [{"drive_id": "this-id-is-longer-than-20", "path_on_host": "\#(image)"}]}"#,
                    "drives[0].drive_id: \"this-id-is-longer-than-20\" must be 1 to 20 printable characters (the guest reads it as the disk's serial)")
        assertError(#"{\#(boot), "drives": [{"drive_id": "a", "path_on_host": "/nonexistent.img"}]}"#,
                    "drives[0].path_on_host: /nonexistent.img: No such file or directory")
        assertError(#"{\#(boot), "drives": [{"drive_id": "a", "path_on_host": "\#(image)"}, {"drive_id": "a", "path_on_host": "\#(data)"}]}"#,
                    "drives[1].drive_id: \"a\" is used twice")
        assertError(#"{\#(boot), "drives": [{"drive_id": "a", "path_on_host": "\#(image)", "is_root_device": true}, {"drive_id": "b", "path_on_host": "\#(data)", "is_root_device": true}]}"#,
                    "drives[1].is_root_device: \"a\" is the root device already")
        assertError(#"{\#(boot), "entropy": {"rate_limiter": {"ops": {"size": 1, "refill_time": 100}}}}"#,
                    "not supported yet: entropy.rate_limiter (rate limiting of the entropy device)")
    }

    func testNetworkInterfaces() throws {
        let c = try parse(#"""
            {\#(boot), "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:FC:00:00:00:05", "rx_rate_limiter": null},
                {"iface_id": "net_1", "host_dev_name": "vmm-tap1"}]}
            """#)
        XCTAssertEqual(c.networkInterfaces.map(\.ifaceID), ["eth0", "net_1"])
        XCTAssertEqual(c.networkInterfaces.map(\.hostDevName), ["tap0", "vmm-tap1"])
        XCTAssertEqual(c.networkInterfaces[0].guestMAC, [0x02, 0xfc, 0, 0, 0, 5])
        XCTAssertNil(c.networkInterfaces[1].guestMAC)
        XCTAssertEqual(c.networkInterfaces.map(\.configIndex), [0, 1])
        XCTAssertEqual(ConfigParser.deviceNames(c), ["pio", "irqchip", "virtio-net0", "virtio-net1"])

        func net(_ fields: String) -> String { #"{\#(boot), "network-interfaces": [\#(fields)]}"# }
        assertError(net(#"{"host_dev_name": "tap0"}"#), "network-interfaces[0].iface_id: missing")
        assertError(net(#"{"iface_id": "eth-0", "host_dev_name": "tap0"}"#),
                    "network-interfaces[0].iface_id: \"eth-0\" must be 1 to 64 letters, digits or underscores")
        assertError(net(#"{"iface_id": "eth0"}"#), "network-interfaces[0].host_dev_name: missing (the name of an existing tap device)")
        assertError(net(#"{"iface_id": "eth0", "host_dev_name": "a-name-of-16-chr"}"#),
                    "network-interfaces[0].host_dev_name: \"a-name-of-16-chr\" is not an interface name (1 to 15 printable characters, no '/', ':' or spaces)")
        assertError(net(#"{"iface_id": "eth0", "host_dev_name": "../tap"}"#),
                    "network-interfaces[0].host_dev_name: \"../tap\" is not an interface name (1 to 15 printable characters, no '/', ':' or spaces)")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0"}, {"iface_id": "a", "host_dev_name": "tap1"}"#),
                    "network-interfaces[1].iface_id: \"a\" is used twice")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0"}, {"iface_id": "b", "host_dev_name": "tap0"}"#),
                    "network-interfaces[1].host_dev_name: \"tap0\" is the tap of \"a\" already")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00"}"#),
                    "network-interfaces[0].guest_mac: \"02:00:00:00:00\" is not a MAC address (six hex pairs separated by ':')")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0", "guest_mac": "01:00:5e:00:00:01"}"#),
                    "network-interfaces[0].guest_mac: 01:00:5e:00:00:01 is a multicast address; a NIC needs a unicast one")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0", "guest_mac": "00:00:00:00:00:00"}"#),
                    "network-interfaces[0].guest_mac: 00:00:00:00:00:00 is the zero address")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100}}}"#),
                    "not supported yet: network-interfaces[0].tx_rate_limiter (rate limiting of network interfaces)")
        assertError(net(#"{"iface_id": "a", "host_dev_name": "tap0", "allow_mmds_requests": true}"#),
                    "network-interfaces[0].allow_mmds_requests: unknown field")
        let many = (0..<20).map { #"{"iface_id": "n\#($0)", "host_dev_name": "tap\#($0)"}"# }.joined(separator: ", ")
        assertError(net(many), "network-interfaces: 20 virtio devices (drives, network interfaces, vsock, entropy); at most 19: one interrupt pin each")
    }

    func testVsock() throws {
        let c = try parse(#"{\#(boot), "vsock": {"vsock_id": "v", "guest_cid": 52, "uds_path": "/run/vm.vsock"}}"#)
        XCTAssertEqual(c.vsock, VMConfig.Vsock(guestCID: 52, udsPath: "/run/vm.vsock"))
        XCTAssertEqual(ConfigParser.deviceNames(c), ["pio", "irqchip", "virtio-vsock0"])
        XCTAssertNil(try parse(#"{\#(boot), "vsock": null}"#).vsock)
        assertError(#"{\#(boot), "vsock": {"guest_cid": 3}}"#, "vsock.uds_path: missing (the Unix socket for the host side)")
        assertError(#"{\#(boot), "vsock": {"uds_path": "/v"}}"#, "vsock.guest_cid: missing (the guest's context id, 3 or more)")
        assertError(#"{\#(boot), "vsock": {"guest_cid": 2, "uds_path": "/v"}}"#, "vsock.guest_cid: 2 is out of range 3...4294967294")
        let long = String(repeating: "a", count: 97)
        assertError(#"{\#(boot), "vsock": {"guest_cid": 3, "uds_path": "/\#(long)"}}"#,
                    "vsock.uds_path: must be 1 to 96 bytes (a Unix socket path, with room for \"_<port>\")")
        assertError(#"{\#(boot), "vsock": {"guest_cid": 3, "uds_path": "/v", "cid": 4}}"#, "vsock.cid: unknown field")
    }

    func testUnsupportedSectionsAreRejectedNotIgnored() {
        assertError(#"{\#(boot), "balloon": {"amount_mib": 1, "deflate_on_oom": false}}"#, "not supported yet: balloon (no balloon device)")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 64, "vcpu_count": 2, "smt": true}}"#,
                    "not supported yet: machine-config.smt (SMT topology: every vCPU is a core of its own)")
        assertError(#"{\#(boot), "cpu-config": {"msr_modifiers": [{"addr": "0x10"}]}}"#,
                    "not supported yet: cpu-config.msr_modifiers (MSR templates)")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"seccomp": "off"}}}"#, "vmm.sandbox.seccomp: expected \"kill\" or \"log\"")
    }

    func testHelpersAreForkedUnlessTheConfigSaysExec() throws {
        XCTAssertTrue(try parse(#"{\#(boot)}"#).vmm.sandbox.forkHelpers)
        XCTAssertTrue(try parse(#"{\#(boot), "vmm": {"sandbox": {"helper_start": "fork"}}}"#).vmm.sandbox.forkHelpers)
        XCTAssertFalse(try parse(#"{\#(boot), "vmm": {"sandbox": {"helper_start": "exec"}}}"#).vmm.sandbox.forkHelpers)
        assertError(#"{\#(boot), "vmm": {"sandbox": {"helper_start": "spawn"}}}"#, "vmm.sandbox.helper_start: expected \"fork\" or \"exec\"")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"helper_start": 1}}}"#, "vmm.sandbox.helper_start: expected a string, found a number")
    }

    func testHelpersRunAsAnIDOfTheirOwn() throws {
        assertError(#"{\#(boot), "vmm": {"sandbox": {"uid": 0}}}"#, "vmm.sandbox.uid: 0 is root; helpers must run as an unprivileged uid")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"gid": 0}}}"#, "vmm.sandbox.gid: 0 is root's group; helpers must run as an unprivileged gid")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"uid": 4294967295}}}"#, "vmm.sandbox.uid: 4294967295 is out of range 0...4294967294")
        // An id a host account or group already has: any will do; the host's own "nobody" is the usual one.
        guard let account = getpwnam("nobody") ?? getpwnam("daemon"), let group = getgrnam("nogroup") ?? getgrnam("daemon") else {
            throw XCTSkip("no nobody/daemon account or group on this host")
        }
        let (uid, gid) = (account.pointee.pw_uid, group.pointee.gr_gid)
        let (user, groupName) = (String(cString: account.pointee.pw_name), String(cString: group.pointee.gr_name))
        assertError(#"{\#(boot), "vmm": {"sandbox": {"uid": \#(uid)}}}"#,
                    "vmm.sandbox.uid: \(uid) is the uid of the host account \"\(user)\"; helpers need a uid no account uses")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"gid": \#(gid)}}}"#,
                    "vmm.sandbox.gid: \(gid) is the gid of the host group \"\(groupName)\"; helpers need a gid no group uses")
        let own = try parse(#"{\#(boot), "vmm": {"sandbox": {"uid": 64123, "gid": 64124}}}"#)
        XCTAssertEqual(own.vmm.sandbox.uid, 64123)
        XCTAssertEqual(own.vmm.sandbox.gid, 64124)
        XCTAssertTrue(own.vmm.sandbox.sharedIDs)
    }

    /// Without a shared id each VM takes one of its own from a range (when vmm runs as root).
    func testAnIDRangeGivesEachVMItsOwnID() throws {
        let plain = try parse(#"{\#(boot)}"#)
        XCTAssertFalse(plain.vmm.sandbox.sharedIDs)
        XCTAssertEqual(plain.vmm.sandbox.idRange, 64000..<65000)
        let range = try parse(#"{\#(boot), "vmm": {"sandbox": {"id_range": {"first": 200000, "count": 16}}}}"#)
        XCTAssertEqual(range.vmm.sandbox.idRange, 200000..<200016)
        assertError(#"{\#(boot), "vmm": {"sandbox": {"uid": 64123, "id_range": {"first": 1000}}}}"#,
                    "vmm.sandbox.id_range: give either uid/gid (shared by every VM of this config) or id_range (an id per VM), not both")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"id_range": {"first": 0}}}}"#, "vmm.sandbox.id_range.first: 0 is out of range 1...4294967294")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"id_range": {"count": 0}}}}"#, "vmm.sandbox.id_range.count: 0 is out of range 1...4294967294")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"id_range": {"first": 4294967290, "count": 10}}}}"#,
                    "vmm.sandbox.id_range.count: first + count must stay below 4294967295 ((uid_t)-1 means \"unchanged\")")
        assertError(#"{\#(boot), "vmm": {"sandbox": {"id_range": {"start": 5}}}}"#, "vmm.sandbox.id_range.start: unknown field")
    }

    func testMachineConfigValues() {
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 0}}"#, "machine-config.mem_size_mib: 0 MiB is too small (at least 2)")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": -5}}"#, "machine-config.mem_size_mib: -5 is out of range 0...2147483647")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": "64"}}"#, "machine-config.mem_size_mib: expected an integer, found a string")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 1.5}}"#, "machine-config.mem_size_mib: expected an integer, found 1.5")
        assertError(#"{\#(boot), "machine-config": {"vcpu_count": 1}}"#, "machine-config.mem_size_mib: missing")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 64, "vcpu_count": 0}}"#, "machine-config.vcpu_count: 0 is out of range 1...32")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 64, "smt": "yes"}}"#, "machine-config.smt: expected true or false, found a string")
        assertError(#"{\#(boot), "machine-config": {"mem_size_mib": 8192}}"#,
                    "not supported yet: machine-config.mem_size_mib (more than 3072 MiB needs RAM above the 32-bit MMIO gap)")
    }

    func testCPUTemplateBitmaps() {
        XCTAssertNil(ConfigParser.parseBitmap("0b0101"))
        XCTAssertNil(ConfigParser.parseBitmap("0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx2"))
        let allX = "0b" + String(repeating: "x", count: 32)
        XCTAssertEqual(ConfigParser.parseBitmap(allX)?.0, 0)
        XCTAssertEqual(ConfigParser.parseBitmap("0b1" + String(repeating: "x", count: 30) + "0")?.1, 0x8000_0000)
        assertError(#"{\#(boot), "cpu-config": {"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "esp", "bitmap": "\#(allX)"}]}]}}"#,
                    "cpu-config.cpuid_modifiers[0].modifiers[0].register: expected one of eax, ebx, ecx, edx")
        assertError(#"{\#(boot), "cpu-config": {"cpuid_modifiers": [{"leaf": "0xz", "modifiers": []}]}}"#,
                    "cpu-config.cpuid_modifiers[0].leaf: \"0xz\" is not a 32-bit integer")
    }

    func testATemplateCannotSetAnUnusableMaxPhysicalAddress() throws {
        func config(_ bitmap: String) -> String {
            #"{\#(boot), "cpu-config": {"cpuid_modifiers": [{"leaf": "0x80000008", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "eax", "bitmap": "\#(bitmap)"}]}]}}"#
        }
        let keepHigh = "0b" + String(repeating: "x", count: 24)
        let path = "cpu-config.cpuid_modifiers[0].modifiers[0].bitmap"
        assertError(config(keepHigh + "01000000"), "\(path): MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) 64 is out of range 32...52 (x86-64 physical addresses have at most 52 bits)")
        assertError(config(keepHigh + "11111111"), "\(path): MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) 255 is out of range 32...52 (x86-64 physical addresses have at most 52 bits)")
        assertError(config(keepHigh + "00110101"), "\(path): MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) 53 is out of range 32...52 (x86-64 physical addresses have at most 52 bits)")
        assertError(config(keepHigh + "00011111"), "\(path): MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) 31 is out of range 32...52 (x86-64 physical addresses have at most 52 bits)")
        assertError(config(keepHigh + "1xxxxxxx"), "\(path): MAXPHYADDR (leaf 0x80000008 EAX bits 7:0) is changed only in part; give all eight bits (no x)")
        XCTAssertEqual(try parse(config(keepHigh + "00110100")).cpuid.first?.set, 52)
        XCTAssertEqual(try parse(config(keepHigh + "00101000")).cpuid.first?.set, 40)
        // The virtual-address width above it, or other leaves' EAX, are not MAXPHYADDR.
        XCTAssertNoThrow(try parse(config("0b" + String(repeating: "x", count: 16) + "00110000" + "xxxxxxxx")))
        XCTAssertNoThrow(try parse(#"{\#(boot), "cpu-config": {"cpuid_modifiers": [{"leaf": "0x80000007", "modifiers": [{"register": "eax", "bitmap": "\#(keepHigh)11111111"}]}]}}"#))
    }

    func testSerialSettings() throws {
        XCTAssertEqual(try parse(#"{\#(boot), "vmm": {"serial": {"output": "none"}}}"#).vmm.serialOutput, .none)
        assertError(#"{\#(boot), "vmm": {"serial": {"input": "keyboard"}}}"#, "vmm.serial.input: expected \"stdin\" or \"none\"")
        assertError(#"{\#(boot), "vmm": {"spin_budget_us": -1}}"#, "vmm.spin_budget_us: -1 is out of range 0...1000000")
    }

    func testCoalescedWritesAreOnUnlessTurnedOff() throws {
        XCTAssertTrue(try parse(#"{\#(boot)}"#).vmm.coalescedWrites)
        XCTAssertFalse(try parse(#"{\#(boot), "vmm": {"coalesced_writes": false}}"#).vmm.coalescedWrites)
        assertError(#"{\#(boot), "vmm": {"coalesced_writes": "no"}}"#, "vmm.coalesced_writes: expected true or false, found a string")
    }

    func testJSONParserEscapesAndNumbers() throws {
        let v = try JSONParser.parse(Array(#"{"s": "a\u00e9\n\ud83d\ude00", "n": -1.5e3, "l": [true, false, null]}"#.utf8))
        XCTAssertEqual(v, .object([("s", .string("aé\n😀")), ("n", .number("-1.5e3")), ("l", .array([.bool(true), .bool(false), .null]))]))
        XCTAssertThrowsError(try JSONParser.parse(Array("[01]".utf8)))
        XCTAssertThrowsError(try JSONParser.parse(Array(String(repeating: "[", count: 100).utf8)))
    }
}

final class ShippedConfigTests: XCTestCase {
    /// Every example in Configs/ parses (its kernel and initrd paths under out/, built by tools, swapped for a file
    /// that exists here).
    func testExampleConfigsParse() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Configs")
        let kernel = NSTemporaryDirectory() + "shipped-config-kernel-\(getpid())"
        FileManager.default.createFile(atPath: kernel, contents: Data([0]))
        defer { try? FileManager.default.removeItem(atPath: kernel) }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".json") }
        XCTAssertFalse(files.isEmpty)
        for f in files {
            let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
                .replacingOccurrences(of: #""out/[^"]*""#, with: "\"\(kernel)\"", options: .regularExpression)
            XCTAssertNoThrow(try ConfigParser.parse(Array(text.utf8)), f)
        }
    }
}

/// Firecracker's file formats where they differ from vmm's own, and the sections as the API checks them one by one.
final class FirecrackerFormatTests: XCTestCase {
    var dir: String!
    var kernel: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "/fc-format-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        kernel = dir + "/kernel"
        FileManager.default.createFile(atPath: kernel, contents: Data([0x7f, 0x45, 0x4c, 0x46]))
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func parse(_ body: String) throws -> VMConfig {
        try ConfigParser.parse(Array(#"{"boot-source": {"kernel_image_path": "\#(kernel!)"}, \#(body)}"#.utf8))
    }

    func testCPUConfigAsATemplateFilePath() throws {
        let template = dir + "/template.json"
        try #"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx01"}]}]}"#
            .write(toFile: template, atomically: true, encoding: .utf8)
        let fromFile = try parse(#""cpu-config": "\#(template)""#)
        XCTAssertEqual(fromFile.cpuid, [.init(leaf: 1, subleaf: 0, register: "ecx", clear: 2, set: 1)])
        let inline = try parse(#""cpu-config": \#(try String(contentsOfFile: template, encoding: .utf8))"#)
        XCTAssertEqual(fromFile, inline, "the path form and the inline object give the same template")
        XCTAssertThrowsError(try parse(#""cpu-config": "\#(dir!)/missing.json""#)) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "cpu-config")
        }
        try #"{"cpuid_modifiers": [{"leaf": "0x1", "modifiers": [{"register": "exx", "bitmap": "0b0"}]}]}"#
            .write(toFile: template, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try parse(#""cpu-config": "\#(template)""#)) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "cpu-config(\(template)).cpuid_modifiers[0].modifiers[0].register", "errors inside the file name it and the field")
        }
    }

    func testLoggerShowLevelAndOriginAreKept() throws {
        let c = try parse(#""logger": {"level": "Info", "show_level": true, "show_log_origin": false}"#)
        XCTAssertEqual(c.logger.showLevel, true)
        XCTAssertEqual(c.logger.showLogOrigin, false)
        XCTAssertNil(try parse(#""logger": {"level": "Info"}"#).logger.showLevel, "absent: vmm's own line format")
    }

    func testMetricsPathMustExist() throws {
        let path = dir + "/metrics"
        FileManager.default.createFile(atPath: path, contents: nil)
        XCTAssertEqual(try parse(#""metrics": {"metrics_path": "\#(path)"}"#).metrics?.metricsPath, path)
        XCTAssertThrowsError(try parse(#""metrics": {"metrics_path": "\#(dir!)/none"}"#)) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "metrics.metrics_path")
        }
        XCTAssertThrowsError(try parse(#""metrics": {"metrics_path": "\#(dir!)"}"#), "a directory is neither a file nor a FIFO")
    }

    func testSectionsCheckedOneByOneNameTheirFields() throws {
        XCTAssertNoThrow(try ConfigParser.checkSection("drives", id: "root", try JSONParser.parse(Array(#"{"drive_id": "root", "path_on_host": "\#(kernel!)", "is_root_device": true, "is_read_only": true}"#.utf8))))
        XCTAssertThrowsError(try ConfigParser.checkSection("drives", id: "root", try JSONParser.parse(Array(#"{"drive_id": "other", "path_on_host": "\#(kernel!)", "is_read_only": true}"#.utf8)))) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "drives[root].drive_id")
        }
        XCTAssertThrowsError(try ConfigParser.checkSection("machine-config", try JSONParser.parse(Array(#"{"vcpu_count": 99, "mem_size_mib": 64}"#.utf8)))) {
            XCTAssertEqual(($0 as? ConfigError)?.description, "machine-config.vcpu_count: 99 is out of range 1...32")
        }
        XCTAssertThrowsError(try ConfigParser.checkSection("network-interfaces", id: "eth0", try JSONParser.parse(Array(#"{"iface_id": "eth0"}"#.utf8)))) {
            XCTAssertEqual(($0 as? ConfigError)?.description, "network-interfaces[eth0].host_dev_name: missing (the name of an existing tap device)")
        }
        XCTAssertThrowsError(try ConfigParser.checkSection("network-interfaces", id: "eth0", try JSONParser.parse(Array(#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#.utf8)))) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "network-interfaces[eth0].iface_id")
        }
        XCTAssertNoThrow(try ConfigParser.checkSection("network-interfaces", id: "eth0", try JSONParser.parse(Array(#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#.utf8))))
        XCTAssertNoThrow(try ConfigParser.checkSection("vsock", try JSONParser.parse(Array(#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#.utf8))))
        XCTAssertThrowsError(try ConfigParser.checkSection("balloon", try JSONParser.parse(Array(#"{"amount_mib": 1}"#.utf8)))) {
            XCTAssertEqual(($0 as? ConfigError)?.path, "balloon", "refused as in a file")
        }
    }

    func testFirecrackerJSONReadsBackToTheSameConfig() throws {
        let c = try parse(#""machine-config": {"vcpu_count": 2, "mem_size_mib": 64}, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:0a:00:00:00:01"}], "logger": {"level": "Debug", "show_level": true}, "cpu-config": {"cpuid_modifiers": [{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "edx", "bitmap": "0b1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}]}"#)
        var again = try ConfigParser.parse(json: c.firecrackerJSON)
        again.logger.showLogOrigin = c.logger.showLogOrigin  // written out as false, absent in the input
        XCTAssertEqual(again, c)
    }
}
