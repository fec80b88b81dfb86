import Channel
import KVM
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
        HelperStartup.begin(role: "vcpu", logLevel: spec.logLevel)
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
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(CPUIDTable.build(supported: supported, vcpuID: 0, vcpuCount: spec.vcpuCount,
                                           template: CPUIDTable.userspaceIRQChip(tscDeadline: tscDeadline) + template))
        try vcpu.apply(spec.entry)

        let policy = WaitPolicy(spinMicroseconds: spec.spinMicroseconds)
        let clients = try spec.channels.map { c in
            DeviceClient(region: try ChannelRegion(attaching: c.memoryFD, layout: c.layout), lane: 0,
                         deviceDoorbell: c.deviceDoorbellFD, responseDoorbell: c.responseDoorbellFDs[0],
                         policy: policy, timeoutMs: spec.deviceTimeoutMs)
        }
        let irqchipRegion = try ChannelRegion(attaching: spec.channels[spec.irqchipChannel].memoryFD,
                                              layout: spec.channels[spec.irqchipChannel].layout)
        let injector = try InterruptInjector(vcpu: vcpu, mailbox: InterruptMailbox(region: irqchipRegion, vcpus: spec.vcpuCount),
                                             kickFD: spec.kickFDs[0])
        let runner = try VCPURunner(vcpu: vcpu, memory: memory, clients: clients, deviceNames: spec.deviceNames,
                                    router: PortRouter(routes: spec.routes), mmioRouter: MMIORouter(routes: spec.mmioRoutes),
                                    interrupts: injector, irqchipDevice: spec.irqchipChannel)
        // The VM is set up: from here on the process can only run it. The vCPU threads are started inside the
        // sandbox (its clone rule allows threads only); the process limit stays off because it counts threads.
        Log.debug("VM set up")
        try HelperSandbox.enter(spec.sandbox, role: "vcpu", controlFD: spec.controlFD, processes: nil)
        Log.debug("sandboxed; entering the guest")
        return try runOnDedicatedThread(runner)
    }

    /// KVM_RUN blocks, so each vCPU gets its own OS thread, never a Swift concurrency pool thread.
    static func runOnDedicatedThread(_ runner: VCPURunner) throws -> ControlMessage.VCPUStop {
        final class Box: @unchecked Sendable { var stop: ControlMessage.VCPUStop = .setupFailed }
        let box = Box()
        let thread = try OSThread.start(name: "vcpu0") { box.stop = runner.run() }
        thread.join()
        return box.stop
    }
}
