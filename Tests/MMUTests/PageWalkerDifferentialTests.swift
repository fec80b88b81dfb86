import CKVM
import CLinux
import KVM
import Memory
import System
import XCTest

/// Our walker against KVM's own (KVM_TRANSLATE) over random page tables in each mode KVM can translate.
final class PageWalkerDifferentialTests: XCTestCase {
    static let memorySize = 64 << 20

    func withVCPU(_ body: (VCPU, GuestMemory) throws -> Void) throws {
        if access("/dev/kvm", R_OK | W_OK) != 0 {
            FileHandle.standardError.write("SKIPPED: /dev/kvm is not usable here; this test needs real KVM\n".data(using: .utf8)!)
            throw XCTSkip("SKIPPED: /dev/kvm is not usable here")
        }
        let kvm = try KVMHost.open()
        let vm = try kvm.createVM()
        let ram = try MemFD.create(name: "mmu-test", size: Self.memorySize)
        let memory = try GuestMemory(fd: ram.raw, size: Self.memorySize)
        try vm.mapMemory(memory)
        try vm.setSystemAddresses(tss: 0xfffb_d000, identityMap: 0xfffb_c000)
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(CPUIDTable.build(supported: try kvm.supportedCPUID(), vcpuID: 0, vcpuCount: 1, template: []))
        try body(vcpu, memory)
    }

    func run(_ mode: PagingMode, trees: Int, addressesPerTree: Int) throws {
        try withVCPU { vcpu, memory in
            let walker = PageWalker(memory: memory)
            var tables = RandomPageTables(memory: memory, mode: mode, physicalAddressBits: vcpu.physicalAddressBits, seed: 0x5eed_0000 + UInt64(PagingMode.allCases.firstIndex(of: mode) ?? 0))
            var compared = 0, valid = 0, mismatches: [String] = []
            for tree in 0..<trees {
                let cr3 = try tables.build()
                var s = try vcpu.sregs()
                s.cr0 = 0x8000_0011 | (tables.rng.chance(50) ? 1 << 16 : 0)
                s.cr3 = cr3
                s.cr4 = (mode == .bits32 ? (tables.pse ? 0x10 : 0) : 0x20) | (mode == .level5 ? 1 << 12 : 0)
                s.efer = (mode == .level4 || mode == .level5 ? 0x500 : 0) | (tables.nxe ? 0x800 : 0)
                if mode == .level4 || mode == .level5 { s.cs.l = 1; s.cs.db = 0 } else { s.cs.l = 0; s.cs.db = 1 }
                vcpu.setSregs(s)
                try vcpu.flushRegisters()
                let context = try vcpu.pagingContext()
                XCTAssertEqual(context.mode, mode)
                if tree == 0 {
                    // Some hosts (these PVM-style ones among them) run guests in long mode only and silently keep
                    // CR0.PG clear for 32-bit and PAE paging: there is nothing to compare against there.
                    var actual = kvm_sregs()
                    _ = vmm_ioctl_ptr(vcpu.fd.raw, VMM_KVM_GET_SREGS, &actual)
                    if actual.cr0 & 0x8000_0000 == 0 {
                        let message = "SKIPPED: this host's KVM does not accept \(mode) paging (CR0.PG stays clear), so KVM_TRANSLATE cannot check it; the walker's unit tests cover it"
                        FileHandle.standardError.write(Data((message + "\n").utf8))
                        throw XCTSkip(message)
                    }
                }
                for _ in 0..<addressesPerTree {
                    let va = try tables.address(root: cr3)
                    let theirs = vcpu.kvmTranslate(va)
                    let ours = try? walker.translate(va, [], context: context)
                    compared += 1
                    if theirs != nil { valid += 1 }
                    if theirs?.physical != ours?.physicalAddress {
                        mismatches.append("tree \(tree) va 0x\(String(va, radix: 16)): KVM \(theirs.map { "0x" + String($0.physical, radix: 16) } ?? "invalid"), ours \(ours.map { "0x" + String($0.physicalAddress, radix: 16) } ?? "invalid")")
                    }
                }
            }
            XCTAssertEqual(mismatches.count, 0, "\(mode): \(mismatches.prefix(10).joined(separator: "\n"))")
            XCTAssertGreaterThan(valid, compared / 10, "\(mode): too few valid translations to mean much (\(valid)/\(compared))")
            print("\(mode) (1 GiB pages \(vcpu.gigabytePages ? "on" : "off")): \(compared) addresses over \(trees) random trees, \(valid) valid, all agree with KVM_TRANSLATE")
        }
    }

    func testBits32() throws { try run(.bits32, trees: 1000, addressesPerTree: 20) }
    func testPAE() throws { try run(.pae, trees: 1000, addressesPerTree: 20) }
    func testLevel4() throws { try run(.level4, trees: 1000, addressesPerTree: 20) }

    func testKVMTranslateReportsFixedAccessBits() throws {
        // On this kernel KVM_TRANSLATE walks as a supervisor read and reports writeable=1, usermode=0 whatever the
        // entries say; the per-access permission bits are checked against the guest's own #PF handler instead.
        try withVCPU { vcpu, memory in
            var tables = RandomPageTables(memory: memory, mode: .level4, physicalAddressBits: vcpu.physicalAddressBits, seed: 7)
            let cr3 = try tables.build()
            var s = try vcpu.sregs()
            s.cr0 = 0x8001_0011; s.cr3 = cr3; s.cr4 = 0x20; s.efer = 0x500; s.cs.l = 1; s.cs.db = 0
            vcpu.setSregs(s)
            try vcpu.flushRegisters()
            var seen = Set<String>()
            for _ in 0..<200 {
                if let t = vcpu.kvmTranslate(try tables.address(root: cr3)) { seen.insert("\(t.writeable)/\(t.user)") }
            }
            XCTAssertEqual(seen, ["true/false"])
        }
    }
}
