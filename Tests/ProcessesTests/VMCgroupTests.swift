import XCTest
@testable import Processes

/// Where a VM's cgroup goes, read from the host's mount table and this process's own cgroups.
final class VMCgroupTests: XCTestCase {
    func testAUnifiedHostGivesTheV2MountAndPath() {
        let host = VMCgroup.Host(
            mountInfo: """
            22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
            30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
            """,
            ownCgroups: "0::/system.slice/vmm.service\n")
        XCTAssertEqual(host.mounts.v2, "/sys/fs/cgroup")
        XCTAssertEqual(host.mounts.v1, [:])
        XCTAssertEqual(host.paths, ["": "/system.slice/vmm.service"])
    }

    func testAHybridHostGivesEveryV1Controller() {
        let host = VMCgroup.Host(
            mountInfo: """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            42 31 0:39 /nested /mnt/elsewhere rw,relatime - cgroup cgroup rw,freezer
            """,
            ownCgroups: "8:pids:/\n4:memory:/box/1\n1:cpu,cpuacct:/\n0::/\n")
        XCTAssertEqual(host.mounts.v2, "/sys/fs/cgroup/unified")
        XCTAssertEqual(host.mounts.v1["cpu"], "/sys/fs/cgroup/cpu,cpuacct")
        XCTAssertEqual(host.mounts.v1["memory"], "/sys/fs/cgroup/memory")
        XCTAssertEqual(host.mounts.v1["pids"], "/sys/fs/cgroup/pids")
        XCTAssertNil(host.mounts.v1["freezer"], "a mount of a hierarchy's subtree is not its root")
        XCTAssertEqual(host.paths["memory"], "/box/1")
        XCTAssertEqual(host.paths["cpuacct"], "/")
        XCTAssertEqual(host.paths[""], "/")
    }
}
