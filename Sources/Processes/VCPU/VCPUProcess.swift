import Channel
import Glibc
import IRQChipLink
import KVM
import Machine
import Memory
import System

/// The vcpu process: creates the VM on the supervisor's RAM memfd, one dedicated thread per vCPU, and the
/// port routing to device channels. It parses no files and talks to no host resource but KVM.
public enum VCPUProcess {
    public static func main(specJSON: String) -> Int32 {
        guard let spec = try? VCPUSpec.decode(specJSON) else {
            Log.error("bad role arguments")
            return 2
        }
        HelperStartup.begin(role: .vcpu, logLevel: spec.logLevel)
        Log.debug("started")
        let stop: ControlMessage.VCPUStop
        do {
            stop = try run(spec)
        } catch {
            Log.report("vcpu setup failed: \(error)")
            stop = .setupFailed
        }
        ControlMessage.vcpuStopped(stop).send(on: spec.controlFD)
        return 0
    }

    static func run(_ spec: VCPUSpec) throws -> ControlMessage.VCPUStop {
        let kvm = try KVMHost(fd: FileDescriptor(owning: spec.kvmFD))
        let vm = try kvm.createVM()
        let memory = try GuestMemory(fd: spec.ramFD, size: spec.memSizeMiB << 20)
        try vm.mapMemory(memory, dirtyLogging: spec.trackDirtyPages)
        // Above guest RAM and below the 4 GiB MMIO window, as Firecracker and QEMU place them.
        try vm.setSystemAddresses(tss: 0xfffb_d000, identityMap: 0xfffb_c000)

        let supported = try kvm.supportedCPUID()
        let template = spec.cpuid.compactMap { r -> CPUIDModifier? in
            guard let reg = CPUIDModifier.Register(rawValue: r.register) else { return nil }
            return CPUIDModifier(leaf: r.leaf, subleaf: r.subleaf, register: reg, clearMask: r.clear, setMask: r.set)
        }
        // The start-up probe for TSC-deadline: offered only if its MSR can reach the irqchip.
        let tscDeadline = vm.routeMSRsToUserspace([TSCDeadline.msrIndex])
        Log.debug("TSC-deadline timer \(tscDeadline ? "offered" : "hidden: the host cannot route IA32_TSC_DEADLINE to userspace")")
        let census = try spec.waiting.attachCensus()
        guard spec.channels.count == spec.servers.count, spec.servers.contains(Server(.irqchip)) else {
            throw SystemError("role arguments: one channel per server, the irqchip among them", errno: EINVAL)
        }
        let regions = try spec.channels.map { c in try ChannelRegion(attaching: c.memoryFD, layout: c.layout) }
        let mailbox = try InterruptMailbox(attaching: spec.mailboxFD, vcpus: spec.vcpuCount)
        let statistics = try VCPUStatistics(attaching: spec.statisticsFD, vcpus: spec.vcpuCount, writable: true)
        let group = try VCPUGroup(count: spec.vcpuCount)
        // vCPU i is APIC ID i and uses lane i of every channel; vCPU 0 is the bootstrap processor, the others
        // wait for INIT and a start-up IPI.
        let runners = try (0..<spec.vcpuCount).map { i in
            let vcpu = try vm.createVCPU(id: i)
            try vcpu.setCPUID(CPUIDTable.build(supported: supported, vcpuID: i, vcpuCount: spec.vcpuCount,
                                               template: CPUIDTable.offered(tscDeadline: tscDeadline) + template, enforced: CPUIDTable.userspaceIRQChip(tscDeadline: tscDeadline)))
            if i == 0 { try vcpu.apply(spec.entry) }
            let clients = spec.channels.indices.map { c in
                DeviceClient(region: regions[c], lane: i, deviceDoorbell: spec.channels[c].deviceDoorbellFD,
                             responseDoorbell: spec.channels[c].responseDoorbellFDs[i], policy: spec.waiting.policy(census: census, offset: i),
                             timeoutMs: spec.deviceTimeoutMs)
            }
            return try VCPURunner(vcpu: vcpu, memory: memory,
                                  devices: DeviceChannels(clients: clients, servers: spec.servers, routes: spec.routes,
                                                          lapicMirror: mailbox.mirror(vcpu: i)),
                                  interrupts: try InterruptInjector(vcpu: vcpu, mailbox: mailbox, kickFD: spec.kickFDs[i],
                                                                    timerFD: spec.timerFDs.indices.contains(i) ? spec.timerFDs[i] : nil),
                                  group: group, bootstrap: i == 0, syscallFixup: spec.syscallFixup, windowStepping: spec.windowStepping,
                                  seat: census.seat(spec.waiting.seat + i), statistics: statistics.writer(vcpu: i))
        }
        // Coalesced writes (the supervisor sends zones only for a VM of one vCPU): a host without the ring has every
        // write exit, as before.
        if !spec.routes.coalesced.isEmpty {
            if let runner = runners.first, runners.count == 1, let ring = runner.vcpu.coalescedWriteRing() {
                for zone in spec.routes.coalesced {
                    try vm.coalesceWrites(at: zone.address, size: zone.size, port: zone.port)
                }
                runner.coalescedWrites = ring
                Log.debug("coalesced writes: \(spec.routes.coalesced.count) zones")
            } else {
                Log.debug("coalesced writes: not on this host (no KVM_CAP_COALESCED_PIO), or more than one vCPU; every write exits")
            }
        }
        // Virtio queue notifications go from KVM straight to the device processes' eventfds.
        for n in spec.queueNotifications {
            try vm.signalEventFD(n.fd, onWriteOf: UInt64(n.queue), length: 4, at: n.address)
        }
        // The VM is set up: from here on the process can only run it. The vCPU threads are started inside the
        // sandbox (its clone rule allows threads only); the process limit stays off because it counts threads.
        // The pause gate's eventfds are made before the sandbox, which allows none to be created.
        let gate = try spec.pauseFD.map { _ in try PauseGate(count: runners.count) }
        for runner in runners { runner.interrupts.pauseGate = gate }
        Log.debug("VM set up")
        try HelperSandbox.enter(spec.sandbox, role: .vcpu, controlFD: spec.controlFD, processes: nil)
        Log.debug("sandboxed; entering the guest")
        // KVM_RUN blocks, so each vCPU gets its own OS thread, never a Swift concurrency pool thread. The first
        // one to stop decides; exiting the process ends the others.
        if let gate {
            let pauseFD = spec.pauseFD ?? -1
            let injectors = runners.map(\.interrupts)
            _ = try OSThread.start(name: "vcpu-pause", stackSize: 256 << 10) {
                gate.serve(pipe: pauseFD, controlFD: spec.controlFD) { for i in injectors { i.kick() } }
            }
        }
        for runner in runners {
            _ = try OSThread.start(name: "vcpu\(runner.vcpu.id)") { group.stop(runner.run()) }
        }
        let stop = group.waitForStop(settling: StartupCode.settleAction())
        // Counted by each vCPU thread without locks: a snapshot that may miss the last few exits of the others.
        for runner in runners { Log.info(runner.exitSummary(statistics.read(vcpu: runner.vcpu.id))) }
        return stop
    }
}
