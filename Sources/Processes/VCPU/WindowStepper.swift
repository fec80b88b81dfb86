/// Single-steps the guest while a vector waits for it: for an interrupt window (IF clear, an STI or MOV SS
/// shadow) or for the TPR to drop (a MOV to CR8 does not exit on this host). This host's KVM honours
/// request_interrupt_window late or not at all; with a debug exit after every instruction the vCPU looks again at
/// each instruction boundary and injects at the first one that allows it, as the CPU does (after `sti; nop`, before
/// a following `cli`). Stepping costs an exit per instruction, so `budget` instructions at most are stepped
/// between two exits of other kinds (a guest that keeps a vector waiting without exiting falls back to the
/// millisecond kicks). Not used while the SYSCALL fix-up owns guest debugging (a long-mode Linux).
struct WindowStepper {
    /// Instructions stepped in a row at most: enough for a short critical section or a handler's tail, far less
    /// than the 1 ms kick interval costs in emulated kernel instructions here.
    static let budget = 64

    private(set) var stepping = false
    private var left = budget
    /// Instructions stepped, for the end-of-run report.
    private(set) var steps = 0

    /// Before an entry, whether a vector waits (`wanted`): true to start stepping, false to stop, nil to leave
    /// guest debugging as it is.
    @inline(__always)
    mutating func change(wanted: Bool) -> Bool? {
        guard wanted else {
            left = Self.budget
            guard stepping else { return nil }
            stepping = false
            return false
        }
        if !stepping && left > 0 {
            stepping = true
            return true
        }
        if stepping && left == 0 {
            stepping = false
            return false
        }
        return nil
    }

    /// An exit that was neither a step nor a kick: the guest got somewhere, a new run of steps may follow.
    @inline(__always)
    mutating func exitedOtherwise() { left = Self.budget }

    /// The next instruction must not be stepped (a HLT): stepping ends at the next entry, until another exit.
    mutating func stopBefore() { left = 0 }

    /// A debug exit while stepping: one instruction done.
    mutating func stepped() {
        if left > 0 { left -= 1 }
        steps += 1
    }
}
