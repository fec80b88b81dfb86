import Channel
import System

/// A process whose start-up is over unmaps the code it mapped so far (see `ProgramCode`): a VM's processes ran
/// parsing, set-up and sandboxing code that they never run again, and mapped it in 64 KiB windows. Each process
/// does it once it has settled: the supervisor `settleNanoseconds` into its watch (the standbys start 30 ms after
/// their devices) and again after a restart, the launcher when nothing is left to do after a request, a standby
/// before it waits, a device or vCPU process `settleNanoseconds` after it began serving (the guest's drivers probing
/// a device run code that is start-up too).
enum StartupCode {
    static let settleNanoseconds: UInt64 = 250_000_000

    static func release() {
        do { try ProgramCode.releaseMappings() } catch { Log.warning("the start-up's code stays mapped: \(error)") }
    }

    /// For a device process's server: `release` once it has served for `settleNanoseconds`.
    static func settleAction() -> SettleAction { SettleAction(afterNanoseconds: settleNanoseconds, release) }
}
