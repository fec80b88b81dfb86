/// The double-fault rules (Intel SDM vol. 3, 6.15, table 6-5; KVM's `kvm_multiple_exception`): what the CPU does
/// when a second exception arises while it delivers a first one.
public enum DoubleFault {
    /// The classes of table 6-5. Software interrupts (INT n, INT3, INTO) and external interrupts and NMIs are
    /// benign whatever their vector: only exceptions the CPU raises are contributory or page faults.
    public enum EventClass: Equatable, Sendable {
        case benign, contributory, pageFault, doubleFault
    }

    /// What the CPU does with the second exception.
    public enum Outcome: Equatable, Sendable {
        /// Deliver the second exception; the first is dropped (a fault re-runs its instruction after the handler).
        case deliverSecond
        /// Deliver #DF with error code 0 instead.
        case doubleFault
        /// A fault while delivering #DF: shutdown.
        case tripleFault
    }

    /// The class of an exception vector raised by the CPU (#DE, #TS, #NP, #SS, #GP contributory; #PF and #VE page
    /// faults; #DF its own; the rest benign).
    public static func classify(exception vector: UInt8) -> EventClass {
        switch vector {
        case 0, 10, 11, 12, 13: return .contributory
        case 14, 20: return .pageFault
        case 8: return .doubleFault
        default: return .benign
        }
    }

    /// Table 6-5: contributory then contributory, or a page fault then a contributory fault or page fault, is #DF;
    /// anything while delivering #DF is a triple fault; everything else is handled serially.
    public static func combine(first: EventClass, second: EventClass) -> Outcome {
        switch (first, second) {
        case (.doubleFault, _): return .tripleFault
        case (.contributory, .contributory), (.pageFault, .contributory), (.pageFault, .pageFault): return .doubleFault
        default: return .deliverSecond
        }
    }
}
