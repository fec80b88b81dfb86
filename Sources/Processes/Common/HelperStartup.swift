import Channel
import Glibc
import System

/// What every helper process does first: name itself, stop reacting to the terminal's signals (the supervisor
/// handles Ctrl-C for everyone), and arrange to die with the supervisor.
enum HelperStartup {
    static func begin(role: String, logLevel: Int, supervisorPID: Int32) -> Bool {
        Log.role = role
        Log.level = Log.Level(rawValue: logLevel) ?? .warning
        Signals.ignore([SIGINT, SIGQUIT, SIGTSTP, SIGPIPE])
        do {
            guard try Signals.dieWithParent(expectedParent: supervisorPID) else {
                Log.error("supervisor \(supervisorPID) is gone; not starting")
                return false
            }
        } catch {
            Log.error("\(error)")
            return false
        }
        return true
    }
}

extension ChannelSpec {
    var layout: ChannelLayout { ChannelLayout(lanes: lanes, capacity: capacity, stateSize: stateSize) }
}
