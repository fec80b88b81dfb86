import CKVM
import CLinux
import Glibc
import System

/// The /dev/kvm handle: capability checks, supported CPUID, VM creation.
public final class KVMHost: @unchecked Sendable {
    public let fd: FileDescriptor

    /// Wraps an already open /dev/kvm descriptor (the supervisor opens it; the vcpu process receives it).
    public init(fd: consuming FileDescriptor) throws(KVMError) {
        self.fd = fd
        let version = try kvmCall("KVM_GET_API_VERSION") { vmm_ioctl_val(self.fd.raw, VMM_KVM_GET_API_VERSION, 0) }
        guard version == KVM_API_VERSION else { throw .unsupported("API version 12 (it reports \(version))") }
    }

    public static func open(path: String = "/dev/kvm") throws(KVMError) -> KVMHost {
        do { return try KVMHost(fd: try FileDescriptor.open(path, O_RDWR)) } catch let e as SystemError { throw .system(e) }
        catch let e as KVMError { throw e } catch { throw .unsupported("\(error)") }
    }

    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, vmm_ioctl_val(fd.raw, VMM_KVM_CHECK_EXTENSION, UInt(cap)))
    }

    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try kvmCall("KVM_GET_VCPU_MMAP_SIZE") { vmm_ioctl_val(fd.raw, VMM_KVM_GET_VCPU_MMAP_SIZE, 0) })
    }

    /// The CPUID entries KVM can expose on this host.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var capacity: UInt32 = 128
        while true {
            let bytes = vmm_kvm_cpuid2_size(capacity)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            let c = raw.assumingMemoryBound(to: kvm_cpuid2.self)
            c.pointee.nent = capacity
            if vmm_ioctl_ptr(fd.raw, VMM_KVM_GET_SUPPORTED_CPUID, raw) == 0 {
                let entries = vmm_kvm_cpuid2_entries(c)!
                return (0..<Int(c.pointee.nent)).map { entries[$0] }
            }
            if errno == E2BIG, capacity < 4096 { capacity *= 2; continue }
            throw .system(SystemError("KVM_GET_SUPPORTED_CPUID", errno: errno))
        }
    }

    public func createVM() throws(KVMError) -> VirtualMachine {
        let vm = try kvmCall("KVM_CREATE_VM") { vmm_ioctl_val(fd.raw, VMM_KVM_CREATE_VM, 0) }
        return VirtualMachine(host: self, fd: FileDescriptor(owning: vm))
    }
}
