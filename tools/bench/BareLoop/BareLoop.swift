import Boot
import CKVM
import Glibc
import KVM
import Memory
import System

/// A guest on a bare in-process KVM loop that answers COM1 and the debug-exit port itself: no channel, no
/// other process, no sandbox. The benchmark's baseline, and a harness for tests that inspect guest memory and
/// vCPU state after the guest ran. Not part of the product.
public final class BareVM {
    public struct Result { public var output: [UInt8] = []; public var exitStatus: Int32 = -1; public var exits = 0; public var tscKHz = 0 }

    public let vcpu: VCPU
    public let memory: GuestMemory
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
        while true {
            let reason = try vcpu.runOnce()
            result.exits += 1
            switch Int32(reason) {
            case KVM_EXIT_IO:
                let io = vmm_run_io(vcpu.run)
                let data = vcpu.ioData
                if io.direction == UInt8(KVM_EXIT_IO_IN) {
                    data.storeBytes(of: io.port == 0x3fd ? UInt8(0x60) : 0xff, as: UInt8.self)
                } else if io.port == 0x3f8 {
                    result.output.append(data.load(as: UInt8.self))
                } else if io.port == 0xf4 {
                    result.exitStatus = (Int32(data.load(as: UInt8.self)) << 1) | 1
                    return result
                }
            case KVM_EXIT_HLT:
                return result
            default:
                guard try onOtherExit(reason) else { throw KVMError.unsupported("exit reason \(reason) in the bare loop") }
            }
        }
    }

    /// One-shot form for the benchmark.
    public static func run(kernel: [UInt8], cmdline: String, memoryMiB: Int = 64) throws -> Result {
        try BareVM(kernel: kernel, cmdline: cmdline, memoryMiB: memoryMiB).run()
    }
}
