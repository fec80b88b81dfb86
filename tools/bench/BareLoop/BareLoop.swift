import Boot
import Channel
import CKVM
import CLinux
import Emulator
import Glibc
import KVM
import Memory
import System

/// A guest on a bare in-process KVM loop that answers COM1, the debug-exit port and MMIO itself: no channel, no
/// other process, no sandbox. The benchmark's baseline, and a harness for tests that inspect guest memory and
/// vCPU state after the guest ran. Not part of the product.
public final class BareVM {
    public struct Result {
        public var output: [UInt8] = []
        public var exitStatus: Int32 = -1
        public var exits = 0
        public var tscKHz = 0
        /// `runPosting`: the port writes the device thread took.
        public var posted = 0
    }

    public let vcpu: VCPU
    public let memory: GuestMemory
    /// The CPU `run()` and `runPosting` run the vCPU on (the calling thread's mask is restored after); nil: wherever
    /// the scheduler puts it.
    public var cpu: Int?
    /// Where each line of the guest's console also goes as it completes (a child process's stdout, which the
    /// benchmark reads while the guest runs); nil: the output is only in the result.
    public var streamOutput: Int32?
    private let vm: VirtualMachine
    private let ram: FileDescriptor

    public init(kernel: [UInt8], cmdline: String, memoryMiB: Int = 64) throws {
        let kvm = try KVMHost.open()
        vm = try kvm.createVM()
        ram = try MemFD.create(name: "bare-ram", size: memoryMiB << 20)
        memory = try GuestMemory(fd: ram.raw, size: memoryMiB << 20)
        try vm.mapMemory(memory)
        try vm.setSystemAddresses(tss: 0xfffb_d000, identityMap: 0xfffb_c000)
        vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(CPUIDTable.build(supported: try kvm.supportedCPUID(), vcpuID: 0, vcpuCount: 1, template: []))
        try vcpu.apply(try GuestLoader.load(kernel: kernel, cmdline: cmdline, modules: [], into: memory))
    }

    /// Runs until debug-exit or HLT. `onOtherExit` may handle an exit reason the loop does not know (return true
    /// to continue); by default such an exit is an error.
    public func run(onOtherExit: (UInt32) throws -> Bool = { _ in false }) throws -> Result {
        var result = Result()
        result.tscKHz = vcpu.tscKHz()
        let restore = try pin()
        defer { restore() }
        while true {
            let reason = try vcpu.runOnce()
            result.exits += 1
            switch Int32(reason) {
            case KVM_EXIT_IO:
                if answerPortIO(&result) { return result }
            case KVM_EXIT_MMIO:
                answerMMIO()
            case KVM_EXIT_HLT:
                return result
            case KVM_EXIT_INTR:
                continue  // a signal (the interleaved group pauses and resumes the process): enter again
            default:
                guard try onOtherExit(reason) else { throw KVMError.unsupported("exit reason \(reason) in the bare loop") }
            }
        }
    }

    /// The floor of a posted write handed to another CPU: `run()`, but each port write other than COM1's THR and
    /// debug-exit goes to a device thread of this process over a channel, as vmm's vCPU posts it to the pio process
    /// (`postDeferringWake`, then `wakeIfAsleep` before the next entry), and the thread takes it with vmm's
    /// `DeviceServer` and its waiting (a learnt spin window up to `spinMicroseconds`, then the doorbell). `census`:
    /// both also use a spin census as vmm's do (the vCPU's seat held through each KVM_RUN, the device's taken for
    /// each spin, stepping aside). No vcpu process, sandbox or device model: what this loop costs over `run()` is
    /// the channel's (and the census's), and the rest of vmm's row is the rest of vmm.
    public func runPosting(spinMicroseconds: Int = 200, census useCensus: Bool = false) throws -> Result {
        let layout = ChannelLayout(lanes: 1)
        let region = try ChannelRegion.create(layout: layout, name: "bare-channel")
        let vcpuSide = try ChannelRegion(attaching: region.raw, layout: layout)
        let deviceSide = try ChannelRegion(attaching: region.raw, layout: layout)
        let deviceBell = try EventFD(), answerBell = try EventFD(), stop = try EventFD()
        let census = try useCensus ? Self.twoSeatCensus() : nil
        let vcpuSeat = census?.seat(0)
        let policy = WaitPolicy(maxSpinMicroseconds: spinMicroseconds, census: census?.seat(1, stepsAside: true))
        var client = DeviceClient(region: vcpuSide, lane: 0, deviceDoorbell: deviceBell.raw, responseDoorbell: answerBell.raw,
                                  policy: policy, timeoutMs: 1000)
        let server = DeviceServer(region: deviceSide, deviceDoorbell: deviceBell.raw, responseDoorbells: [answerBell.raw], policy: policy)
        let stopFD = stop.raw
        final class DeviceThread: @unchecked Sendable { var taken = 0; var error: Error? }
        let thread = DeviceThread()
        let device = try OSThread.start(name: "bare-device") {
            var server = server
            do {
                while true {
                    while let (_, message) = server.next(malformed: { _ in }) {
                        if message.operation == .portWrite { thread.taken += 1 }
                    }
                    if try server.wait(extra: [stopFD]).first?.contains(.readable) == true { break }
                }
            } catch { thread.error = error }
        }
        var result = Result()
        result.tscKHz = vcpu.tscKHz()
        var failure: Error?
        do {
            let restore = try pin()  // after the device thread started: it must not inherit the pin
            defer { restore() }
            loop: while true {
                vcpuSeat?.hold()
                try client.wakeIfAsleep()
                let reason = try vcpu.runOnce()
                vcpuSeat?.release()
                result.exits += 1
                switch Int32(reason) {
                case KVM_EXIT_IO:
                    let io = vmm_run_io(vcpu.run)
                    if io.direction == UInt8(KVM_EXIT_IO_OUT) && io.port != 0x3f8 && io.port != 0xf4 {
                        let data = vcpu.ioData
                        let value = io.size == 4 ? UInt64(data.loadUnaligned(as: UInt32.self))
                            : io.size == 2 ? UInt64(data.loadUnaligned(as: UInt16.self)) : UInt64(data.load(as: UInt8.self))
                        try client.postDeferringWake(.portWrite, size: io.size, address: UInt64(io.port), data: value)
                    } else if answerPortIO(&result) {
                        break loop
                    }
                case KVM_EXIT_MMIO:
                    answerMMIO()
                case KVM_EXIT_HLT:
                    break loop
                case KVM_EXIT_INTR:
                    continue
                default:
                    throw KVMError.unsupported("exit reason \(reason) in the bare posting loop")
                }
            }
        } catch { failure = error }
        var one: UInt64 = 1
        _ = write(stop.raw, &one, 8)
        device.join()
        if let failure = failure ?? thread.error { throw failure }
        result.posted = thread.taken
        return result
    }

    /// Pins the calling thread to `cpu`, if set; returns what puts its mask back.
    private func pin() throws -> () -> Void {
        guard let cpu else { return {} }
        let mask = try cpuAffinity(pid: 0)
        try setCPUAffinity(pid: 0, cpus: [cpu])
        return { try? setCPUAffinity(pid: 0, cpus: mask) }
    }

    /// A census for one vCPU and one device (the mapping outlives the descriptor, closed on return).
    private static func twoSeatCensus() throws -> SpinCensus {
        let fd = try SpinCensus.create(cpus: SpinCensus.availableCPUs(), seats: 2)
        return try SpinCensus(attaching: fd.raw)
    }

    /// COM1 (LSR: always ready; THR: the byte joins the output) and debug-exit; other ports read all-ones. True
    /// when the guest asked to exit.
    private func answerPortIO(_ result: inout Result) -> Bool {
        let io = vmm_run_io(vcpu.run)
        let data = vcpu.ioData
        if io.direction == UInt8(KVM_EXIT_IO_IN) {
            data.storeBytes(of: io.port == 0x3fd ? UInt8(0x60) : 0xff, as: UInt8.self)
        } else if io.port == 0x3f8 {
            let byte = data.load(as: UInt8.self)
            result.output.append(byte)
            if byte == 0x0a, let fd = streamOutput { writeLine(of: result.output, to: fd) }
        } else if io.port == 0xf4 {
            result.exitStatus = (Int32(data.load(as: UInt8.self)) << 1) | 1
            return true
        }
        return false
    }

    /// Writes the last line of `output` (which ends with a newline) to `fd`.
    private func writeLine(of output: [UInt8], to fd: Int32) {
        let start = output.dropLast().lastIndex(of: 0x0a).map { $0 + 1 } ?? 0
        output[start...].withUnsafeBytes { bytes in
            var done = 0
            while done < bytes.count {
                let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                done += n
            }
        }
    }

    /// Every MMIO read answers the local APIC's version register (0x50014), writes are dropped: the benchmark's
    /// baseline for an MMIO exit.
    private func answerMMIO() {
        guard vmm_run_mmio_is_write(vcpu.run) == 0, let data = vmm_run_mmio_data(vcpu.run) else { return }
        let value: UInt64 = 0x0005_0014
        withUnsafeBytes(of: value.littleEndian) { UnsafeMutableRawPointer(data).copyMemory(from: $0.baseAddress!, byteCount: Int(vmm_run_mmio_len(vcpu.run))) }
    }

    /// The interrupt baseline: the guest's local APIC timer (one-shot, 1 tick per ns, the LVT's vector) as a
    /// timerfd the vCPU thread itself waits on while the guest is in HLT, and KVM_INTERRUPT straight after its
    /// expiry: one wake-up and one ioctl between the expiry and the guest, no other thread or process. Runs until
    /// debug-exit; COM1 output as `run()`.
    public func runWithLocalTimer() throws -> Result {
        var result = Result()
        result.tscKHz = vcpu.tscKHz()
        let timer = vmm_timerfd_create()
        guard timer >= 0 else { throw KVMError.system(SystemError("timerfd_create", errno: errno)) }
        defer { close(timer) }
        var vector: UInt32 = 0
        var armed = false
        // The guest's 32-bit IRET is one KVM's emulator gives up on here: the same fallback as vmm's vcpu process.
        let fallback = try EmulationFallback(vcpu: vcpu, memory: memory)
        func inject() throws {
            var expirations: UInt64 = 0
            _ = read(timer, &expirations, 8)
            armed = false
            var irq = kvm_interrupt(irq: vector)
            guard vmm_ioctl_ptr(vcpu.fd.raw, VMM_KVM_INTERRUPT, &irq) == 0 else {
                throw KVMError.system(SystemError("KVM_INTERRUPT", errno: errno))
            }
        }
        while true {
            let reason = try vcpu.runOnce()
            result.exits += 1
            switch Int32(reason) {
            case KVM_EXIT_IO:
                if answerPortIO(&result) { return result }
            case KVM_EXIT_MMIO where vmm_run_mmio_is_write(vcpu.run) != 0:
                let value = vmm_run_mmio_data(vcpu.run).map { UnsafeRawPointer($0).loadUnaligned(as: UInt32.self) } ?? 0
                switch vmm_run_mmio_addr(vcpu.run) {
                case 0xfee0_0320: vector = value & 0xff  // LVT timer
                case 0xfee0_0380:                         // initial count: armed, in ns
                    _ = vmm_timerfd_set_absolute(timer, value == 0 ? 0 : monotonicNanoseconds() + UInt64(value))
                    armed = value != 0
                default: break  // SVR, divide, EOI
                }
            case KVM_EXIT_MMIO:
                answerMMIO()
            case KVM_EXIT_HLT:
                // The guest waits with interrupts on (`sti; hlt`): block on the expiry itself, then inject.
                guard armed else { return result }
                var pfd = pollfd(fd: timer, events: Int16(POLLIN), revents: 0)
                while poll(&pfd, 1, -1) < 0 && errno == EINTR {}
                // As vmm does: the HLT has completed, so the STI shadow KVM may still report is over.
                var events = try vcpu.events()
                if events.interrupt.shadow != 0 {
                    events.interrupt.shadow = 0
                    try vcpu.setEvents(events, flags: UInt32(KVM_VCPUEVENT_VALID_SHADOW))
                }
                try inject()
            case KVM_EXIT_INTERNAL_ERROR where vmm_run_internal_suberror(vcpu.run) == UInt32(KVM_INTERNAL_ERROR_EMULATION):
                if case .unhandled(let why) = try fallback.handle() { throw KVMError.unsupported("emulation in the bare interrupt loop: \(why)") }
            default:
                throw KVMError.unsupported("exit reason \(reason) in the bare interrupt loop")
            }
        }
    }

    /// One-shot form for the benchmark.
    public static func run(kernel: [UInt8], cmdline: String, memoryMiB: Int = 64, cpu: Int? = nil) throws -> Result {
        let vm = try BareVM(kernel: kernel, cmdline: cmdline, memoryMiB: memoryMiB)
        vm.cpu = cpu
        return try vm.run()
    }
}
