import Channel
import Glibc
import System

/// What every helper process does first: name itself and stop reacting to the terminal's signals (the
/// supervisor handles Ctrl-C for everyone). Dying with the supervisor was arranged before exec (see vmm_spawn).
enum HelperStartup {
    static func begin(role: String, logLevel: Int) {
        Log.role = role
        Log.level = Log.Level(rawValue: logLevel) ?? .warning
        Signals.ignore([SIGINT, SIGQUIT, SIGTSTP, SIGPIPE])
    }
}

extension ChannelSpec {
    var layout: ChannelLayout { ChannelLayout(lanes: lanes, capacity: capacity, stateSize: stateSize) }
}
