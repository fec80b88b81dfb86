// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "vmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vmm", targets: ["vmm"]),
        .executable(name: "vmm-bench", targets: ["VMMBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The HTTP/1.1 server of the Firecracker-compatible API (`vmm run --api-sock`): a kept library, not our parser.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // C interop: KVM ioctl numbers and structs, Linux calls Swift cannot import directly.
        .target(name: "CKVM"),
        .target(name: "CLinux"),
        // Without pkgConfig: its -L/usr/lib/... would come before .build/link in vmm's release link, where
        // tools/link/prepare makes -lseccomp and -lcap link the static archives (headers and libraries are in the
        // system's default paths; tools/install-deps installs libseccomp-dev and libcap-dev).
        .systemLibrary(name: "CSeccomp"),
        .systemLibrary(name: "CCap"),
        .systemLibrary(name: "CZydis", providers: [.apt(["libzydis-dev"])]),

        // The thin syscall layer: owned fds and mappings, typed errno, spawning with exact fds.
        .target(name: "System", dependencies: ["CLinux"]),
        // Pure device models: no syscalls, unit-tested without a VM.
        .target(name: "Devices"),
        // Virtio device side: the MMIO transport, split virtqueues and the device backends (blk, rng). Pure: the
        // virtio device processes wrap it; unit- and fuzz-tested without a VM.
        .target(name: "Virtio", dependencies: ["Devices"]),
        // The machine layout (which process serves which port, address and pin), the access routes built from
        // it and the roles: pure, unit-tested without a VM.
        .target(name: "Machine", dependencies: ["Devices"]),
        // The policy format and its compiler: text -> rules -> a classic BPF program (libseccomp).
        .target(name: "SeccompPolicy", dependencies: ["CLinux", "CKVM", "CSeccomp"]),
        // Policies -> seccomp, capabilities, namespaces, the empty-root jail.
        // Policies/*.policy are built into it, as texts and compiled (the EmbedPolicies plugin): a config cannot
        // choose them, and no helper compiles them on its way to the guest.
        .target(name: "Sandbox", dependencies: ["CLinux", "CCap", "SeccompPolicy"], plugins: ["EmbedPolicies"]),
        .plugin(name: "EmbedPolicies", capability: .buildTool(), dependencies: ["PolicyEmbedder"]),
        .executableTarget(name: "PolicyEmbedder", dependencies: ["SeccompPolicy"], path: "Plugins/PolicyEmbedder"),
        // Guest RAM and guest-physical addresses.
        .target(name: "Memory", dependencies: ["System"]),
        // Shared-memory rings, doorbells and the messages that cross them.
        .target(name: "Channel", dependencies: ["System", "CLinux"]),
        // The irqchip's side of the wire: its channel operations and the vCPUs' interrupt mailboxes.
        .target(name: "IRQChipLink", dependencies: ["Channel", "Devices", "System"]),
        // KVM: VM, vCPU (kvm_run, register cache), CPUID, exits.
        .target(name: "KVM", dependencies: ["CKVM", "System", "Memory", "X86"]),
        // Architectural facts the loaders and the KVM layer share: the state a vCPU starts in.
        .target(name: "X86"),
        // ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) and the AML they need, as bytes: pure, unit-tested without a VM.
        .target(name: "ACPI"),
        // Guest image loaders: multiboot v1, ELF64, the Linux boot protocol, the MP table, the ACPI tables' placement.
        .target(name: "Boot", dependencies: ["Memory", "X86", "ACPI"]),
        // The instruction-emulation fallback: Zydis decoding, the handled instruction set, exception injection.
        .target(name: "Emulator", dependencies: ["KVM", "Memory", "CKVM", "CZydis"]),
        // The Firecracker-format config and its validation.
        .target(name: "Config"),
        // One folder per process role.
        .target(name: "Processes", dependencies: [
            "System", "KVM", "Memory", "Channel", "IRQChipLink", "Devices", "Boot", "Config", "SeccompPolicy", "Sandbox", "Emulator", "X86", "Machine", "ACPI", "Virtio",
        ]),
        // Firecracker's REST API on a Unix socket: HTTP routing and request decoding into the config model (validated
        // by the config parser's own section readers); the supervisor serves what needs the running VM.
        .target(name: "API", dependencies: [
            "Config", "Processes", "System",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .executableTarget(name: "vmm", dependencies: [
            "Processes", "Config", "Machine", "API", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The benchmark suite: pure figures and reporting (unit-tested), and the command that measures.
        .target(name: "BenchKit", path: "tools/bench/BenchKit"),
        // A guest on a bare in-process KVM loop: the benchmark's baseline and a harness for guest-level tests.
        .target(name: "BareLoop", dependencies: ["KVM", "Memory", "Boot", "System", "CKVM", "CLinux", "Emulator", "Channel"], path: "tools/bench/BareLoop"),
        .executableTarget(name: "VMMBench", dependencies: [
            "BenchKit", "BareLoop", "KVM", "Memory", "Boot", "System", "CLinux",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "tools/bench/Command"),
        // A second real process for the ring tests.
        .executableTarget(name: "ring-peer", dependencies: ["Channel", "System"], path: "Tests/RingPeer"),

        // Shared by the test targets: seeded random numbers for fuzz and property tests.
        .target(name: "TestSupport", dependencies: ["Devices"], path: "Tests/TestSupport"),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "IRQChipLink", "System", "TestSupport"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "Devices", "TestSupport"]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "Devices"]),
        .testTarget(name: "ProcessesTests", dependencies: ["Processes", "Machine", "CLinux", "CKVM", "Channel", "System"]),
        .testTarget(name: "ChannelTests", dependencies: ["Channel", "System", "ring-peer", "TestSupport"]),
        .testTarget(name: "ConfigTests", dependencies: ["Config"]),
        .testTarget(name: "BenchKitTests", dependencies: ["BenchKit"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "SeccompPolicy"]),
        .testTarget(name: "MMUTests", dependencies: ["Memory", "KVM", "System", "BareLoop", "TestSupport"]),
        .testTarget(name: "EmulatorTests", dependencies: ["Emulator"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "Memory", "System", "ACPI"]),
        .testTarget(name: "ACPITests", dependencies: ["ACPI"]),
        .testTarget(name: "SystemTests", dependencies: ["System"]),
        .testTarget(name: "VMMTests", dependencies: ["vmm", "System", "BareLoop", "BenchKit", "TestSupport"], path: "Tests/VMMTests"),
    ],
    swiftLanguageModes: [.v6]
)

// Release builds leave out Swift's run-time exclusivity checks; debug builds, and so the tests, keep them. Each
// dynamic check is a call into the runtime and a thread-local lookup (swift_beginAccess, __tls_get_addr), and the
// per-exit path touches class state a few times per exit: on the 32-bit posted-write loop they were ~200 of the port
// handler's ~300 cycles, and the vCPU thread's own time per exit went from ~550 to ~440 cycles (rdtsc probes, 300k exits).
// (C targets ignore Swift settings.)
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
}

// The modules whose types go into the helpers' specs, and the config's reader, get concrete generic types' metadata
// from direct accessors, not from a mangled name the runtime demangles: instantiating
// `KeyedEncodingContainer<Spec.CodingKeys>` by name checks `CodingKeys: CodingKey` at run time, and the first check
// of each type scans all of vmm's ~5,000 protocol conformance records (~70 us here). The supervisor's encoding of the
// first helpers' specs made ~25 such scans, ~1.8 ms on the way to the guest's first instruction (perf: 10% of the
// supervisor's samples in a VM's start). Unspecialised standard-library generics still scan once per type and
// process (`joined(separator:)`, a dictionary's Codable): avoid them on the way to the guest.
for target in package.targets where ["Processes", "Machine", "X86", "Config"].contains(target.name) {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"], .when(configuration: .release))]
}

// Release builds link the Swift runtime and libraries statically (what `swift build --static-swift-stdlib` does, here
// so that every release build gets it): vmm loads no Swift shared libraries at its start. Not the test-support targets
// (XCTest has no static library). The executables are linked by lld with their relative relocations packed (RELR) and
// without the static stdlib's `-export-dynamic`: exported, every symbol of the runtime and the program went into the
// dynamic symbol table, and ld.so resolved each relocation against one by name; with 1.3 MiB of relocations and 1.2
// MiB of symbol table and names in the code segment, all of it read at every start, that was 3 MiB of each VM's PSS.
// libstdc++ comes from its archive too, through the linker script tools/link/prepare writes to .build/link.
// Our modules are compiled with one section per function, and vmm's release link places the functions a VM runs
// first, in the order of tools/link/vmm.order: every process of a VM maps vmm's code, 64 KiB around each page it
// runs, and spread over 12 MiB of .text the VM's 2.4 MiB of code pages mapped 6.1 MiB (tools/link/generate-order
// makes the order; it sets VMM_LINK_MAP to get the link map it reads).
for target in package.targets where (target.type == .regular || target.type == .executable) && target.path?.hasPrefix("Tests") != true {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-static-stdlib", "-Xfrontend", "-function-sections"], .when(configuration: .release))]
    if target.type == .executable {
        let order = target.name != "vmm" ? [] : [
            "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/tools/link/vmm.order", "-Xlinker", "--no-warn-symbol-ordering",
        ] + (Context.environment["VMM_LINK_MAP"].map { ["-Xlinker", "-Map=\($0)", "-Xlinker", "--no-demangle"] } ?? [])
        target.linkerSettings = (target.linkerSettings ?? []) + [.unsafeFlags([
            "-static-stdlib", "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic",
            "-L", "\(Context.packageDirectory)/.build/link",
        ] + order, .when(configuration: .release))]
    }
}
