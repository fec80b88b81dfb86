import Glibc
import Synchronization
import System

/// Pause and resume (the API's `PATCH /vm`). The supervisor writes `P` or `R` on a pipe the vcpu process reads on a
/// thread of its own; for a pause that thread raises `requested`, kicks every vCPU out of KVM_RUN (immediate_exit and
/// the kick signal, as an interrupt does) and waits until each vCPU thread waits at the gate, then acknowledges on the
/// control pipe. A vCPU checks the gate before every KVM_RUN and in every sleep (HLT, waiting for a start-up IPI), so
/// a paused vCPU is outside KVM_RUN and enters it again only after the resume. Devices keep running and keep their
/// state; an interrupt raised meanwhile waits in the vCPU's mailbox and is injected after the resume.
final class PauseGate: @unchecked Sendable {
    let count: Int
    private let requestedFlag = Atomic<Bool>(false)
    private let waiting = Mutex(0)
    /// Readable (never read by the vCPUs: polled) while the VM is not paused; drained for a pause.
    private let running: EventFD
    /// Rung by each vCPU as it arrives at the gate.
    private let arrived: EventFD

    init(count: Int) throws(SystemError) {
        self.count = count
        running = try EventFD()
        arrived = try EventFD()
        try running.signal()
    }

    var isRequested: Bool { requestedFlag.load(ordering: .acquiring) }

    /// Called by a vCPU thread when `isRequested`: waits outside KVM_RUN until the resume.
    func wait() {
        waiting.withLock { $0 += 1 }
        try? arrived.signal()
        while isRequested {
            _ = try? Poll.wait([running.raw], timeoutMs: 100)
        }
        waiting.withLock { $0 -= 1 }
    }

    /// The controller thread: serves the supervisor's pause pipe until it closes.
    func serve(pipe: Int32, controlFD: Int32, kick: @escaping () -> Void) {
        var byte: UInt8 = 0
        while true {
            let n = Glibc.read(pipe, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            guard n == 1 else { return }
            switch byte {
            case UInt8(ascii: "P"):
                var drain: UInt64 = 0
                _ = Glibc.read(running.raw, &drain, 8)
                requestedFlag.store(true, ordering: .releasing)
                // A kick that lands between a vCPU's gate check and its KVM_RUN can be lost (KVM_RUN clears
                // immediate_exit's effect only once it is entered): kick again until every vCPU is at the gate.
                while waiting.withLock({ $0 }) < count {
                    kick()
                    _ = try? Poll.wait([arrived.raw], timeoutMs: 5)
                    _ = Glibc.read(arrived.raw, &drain, 8)
                }
                Log.debug("paused: every vCPU is outside KVM_RUN")
                ControlMessage.vcpuPaused(true).send(on: controlFD)
            case UInt8(ascii: "R"):
                requestedFlag.store(false, ordering: .releasing)
                try? running.signal()
                Log.debug("resumed")
                ControlMessage.vcpuPaused(false).send(on: controlFD)
            default:
                return  // the supervisor writes nothing else
            }
        }
    }
}
