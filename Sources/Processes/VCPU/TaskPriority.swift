/// The vCPU's own copy of its local APIC's task priority (TPR, and CR8 which is its upper nibble in 64-bit mode).
/// Only this vCPU writes it (an xAPIC TPR write or MOV to CR8; INIT resets it), so the copy is exact at once, while
/// the irqchip's model applies the write a round trip later. The vcpu process gates its injections on it: an offer
/// the irqchip made before a TPR raise is held back at once (SDM vol. 3, 11.8.3.1: the CPU delivers only a vector
/// whose priority class is above the processor priority), and a lowering is seen before the next instruction.
struct TaskPriority {
    private(set) var value: UInt8 = 0

    /// The priority class: the upper nibble, which is also CR8.
    var priorityClass: UInt8 { value >> 4 }

    /// Sets the TPR; true when its class went down, which may make a requested vector deliverable.
    mutating func set(_ new: UInt8) -> Bool {
        defer { value = new }
        return new >> 4 < value >> 4
    }

    /// Whether the CPU holds `vector` back at this TPR: its class is not above the TPR's.
    func holdsBack(_ vector: UInt8) -> Bool { vector >> 4 <= priorityClass }
}
