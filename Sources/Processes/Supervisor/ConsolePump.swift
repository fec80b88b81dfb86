import Channel
import Glibc
import System

/// The supervisor's end of the console: writes what the pio process committed to `vmm.serial.output`, feeds
/// stdin to it, and sends the i8042 keyboard's scancodes (`SendCtrlAltDel`). It holds the console's descriptors
/// so that the pio process can die and be replaced without a byte lost or repeated; the bytes are copied, never
/// interpreted (the indices are checked: a pio process that corrupts them loses the console, not the supervisor).
final class ConsolePump {
    let memory: FileDescriptor
    private let rings: ConsoleRings
    /// Rung by the pio process when it published output or consumed input.
    let news: EventFD
    /// Rung here when input was published.
    let inputReady: EventFD
    private var output: ByteRingReader
    private var input: ByteRingWriter
    private var keys: ByteRingWriter
    private let sink: Int32?
    private var source: Int32?
    /// The stream's indices were corrupt: nothing more is read from it.
    private(set) var broken = false
    private var sinkFailed = false

    init(sink: Int32?, source: Int32?) throws {
        memory = try ConsoleRings.create()
        rings = try ConsoleRings(fd: memory.raw)
        news = try EventFD()
        inputReady = try EventFD()
        output = rings.outputReader()
        input = rings.inputWriter()
        keys = rings.keysWriter()
        self.sink = sink
        self.source = source
    }

    /// The pio process's view of it, numbered for that child.
    func spec(_ fds: inout FDList) -> ConsoleSpec {
        ConsoleSpec(memoryFD: fds.add(memory.raw, owner: self), newsFD: fds.add(news.raw, owner: self),
                    inputFD: fds.add(inputReady.raw, owner: self))
    }

    /// What to wait on: the pio's doorbell, and stdin while the input stream has room.
    var pollFDs: [Int32] {
        var fds = [news.raw]
        if let source, !broken, ((try? input.space()) ?? 0) > 0 { fds.append(source) }
        return fds
    }

    /// After a wake-up: writes out the committed output, and moves what stdin has into the input stream.
    func pump(ready: [Poll.Event]) {
        var value: UInt64 = 0
        if ready.first.map({ !$0.isEmpty }) == true { _ = Glibc.read(news.raw, &value, 8) }
        drainOutput()
        if ready.count > 1, !ready[1].isEmpty, let source { readInput(source) }
    }

    /// Writes out everything the pio process has committed so far.
    func drainOutput() {
        guard !broken else { return }
        do {
            while true {
                let bytes = try output.take(max: ConsoleRings.output.capacity)
                if bytes.isEmpty { break }
                if let sink, !sinkFailed {
                    do { try FileDescriptor.writeAll(sink, bytes) } catch {
                        // Still consumed below: a guest must not stall because nobody reads its console.
                        Log.warning("console output failed, dropping it from now on: \(error)")
                        sinkFailed = true
                    }
                }
                output.publish()
            }
        } catch {
            Log.warning("console output stream: \(error); dropping the console")
            broken = true
        }
    }

    /// Queues scancodes for the keyboard, all or none: false when the stream has no room for them all (the guest
    /// is not reading its keyboard) or the pio process corrupted its index.
    func sendKeys(_ bytes: [UInt8]) -> Bool {
        guard let room = try? keys.space(), room >= bytes.count, (try? keys.append(bytes)) == bytes.count else { return false }
        keys.publish()
        try? inputReady.signal()
        return true
    }

    private func readInput(_ fd: Int32) {
        guard let room = try? input.space(), room > 0 else { return }
        var buffer = [UInt8](repeating: 0, count: room)
        let n = Glibc.read(fd, &buffer, room)
        if n > 0 {
            _ = try? input.append(buffer[0..<n])
            input.publish()
            try? inputReady.signal()
        } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
            source = nil  // end of input
        }
    }
}
