import Boot
import CKVM
import Glibc
import KVM
import Memory
import System

/// The baseline: the same guest on a bare in-process KVM loop that answers port accesses itself,
/// with no channel and no other process. Output bytes to COM1 are collected; debug-exit ends the run.
struct BareLoop {
    struct Result { var output: [UInt8] = []; var exitStatus: Int32 = -1; var exits = 0; var tscKHz = 0 }

    static func run(kernel: [UInt8], cmdline: String, memoryMiB: Int = 64) throws -> Result {
        let kvm = try KVMHost.open()
        let vm = try kvm.createVM()
        let ramFD = try MemFD.create(name: "bench-ram", size: memoryMiB << 20)
        let memory = try GuestMemory(fd: ramFD.raw, size: memoryMiB << 20)
        try vm.mapMemory(memory)
        try vm.setSystemAddresses(tss: 0xfffb_d000, identityMap: 0xfffb_c000)
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(CPUIDTable.build(supported: try kvm.supportedCPUID(), vcpuID: 0, vcpuCount: 1, template: []))
        try vcpu.apply(try GuestLoader.load(kernel: kernel, cmdline: cmdline, modules: [], into: memory))
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
                throw KVMError.unsupported("exit reason \(reason) in the bare loop")
            }
        }
    }
}
