import Channel
import Devices
import IRQChipLink

/// Everything of the irqchip's that must outlive its process: the LAPICs and the IOAPIC, the mailbox writes decided
/// and not yet known to be made, and where the devices' lines channel was read to. It is committed to the vCPUs'
/// channel together with that channel's positions (see `DeviceServer.commit`), so a successor process restores it,
/// finishes the mailbox writes, and handles again exactly the requests and line changes not committed.
final class IRQChipState: RestartableDevice {
    let chip: InterruptController
    let outbox: MailboxOutbox
    /// The lines channel's positions, set just before each commit (the lines are published only after it).
    var linesPositions: [UInt64]

    /// A format tag, so that a successor never restores a different build's layout of this state.
    private static let snapshotVersion: UInt8 = 1

    init(vcpus: Int, lines: Int) {
        chip = InterruptController(vcpuCount: vcpus)
        outbox = MailboxOutbox(vcpus: vcpus)
        linesPositions = Array(repeating: 0, count: lines)
    }

    func snapshot() -> [UInt8] {
        var w = SnapshotWriter()
        w.u8(Self.snapshotVersion)
        chip.save(to: &w)
        outbox.save(to: &w)
        w.u16(UInt16(linesPositions.count))
        for p in linesPositions { w.u64(p) }
        return w.bytes
    }

    func didCommit() {}

    /// Restores what a predecessor committed into this (fresh) state. A record that fails part-way leaves it
    /// half-restored: the caller then starts over with a fresh one.
    func restore(_ bytes: [UInt8]) throws(SnapshotError) {
        var r = SnapshotReader(bytes)
        guard try r.u8() == Self.snapshotVersion else { throw .invalid("irqchip state of another format") }
        try chip.restore(from: &r)
        try outbox.restore(from: &r)
        let count = Int(try r.u16())
        guard count == linesPositions.count else { throw .invalid("\(count) line positions for \(linesPositions.count) lines") }
        var positions: [UInt64] = []
        for _ in 0..<count { positions.append(try r.u64()) }
        try r.finish()
        linesPositions = positions
    }
}
