/// The MC146818 CMOS real-time clock and its RAM at ports 0x70 (index, bit 7 the NMI mask) and 0x71 (data):
/// time and date in BCD, 24-hour mode, from an injected wall clock; status registers that never show an update in
/// progress; 128 bytes of CMOS RAM the guest may use. No alarm or periodic interrupts (Linux keeps time with
/// kvmclock and reads this clock once, at boot).
public final class CMOSRTC: PortDevice {
    public static let defaultPort: UInt16 = 0x70
    public let portCount: UInt16 = 2

    private var index: UInt8 = 0
    private var ram = [UInt8](repeating: 0, count: 128)
    private let secondsSinceEpoch: () -> Int64

    enum Register {
        static let seconds: UInt8 = 0x00, minutes: UInt8 = 0x02, hours: UInt8 = 0x04, weekday: UInt8 = 0x06
        static let day: UInt8 = 0x07, month: UInt8 = 0x08, year: UInt8 = 0x09
        static let statusA: UInt8 = 0x0a, statusB: UInt8 = 0x0b, statusC: UInt8 = 0x0c, statusD: UInt8 = 0x0d
        static let century: UInt8 = 0x32
    }

    /// `secondsSinceEpoch` is the host's wall clock (UTC), read at each time register access.
    public init(secondsSinceEpoch: @escaping () -> Int64) {
        self.secondsSinceEpoch = secondsSinceEpoch
        ram[Int(Register.statusA)] = 0x26  // 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) always clear
        ram[Int(Register.statusB)] = 0x02  // 24-hour, BCD, no interrupts
        ram[Int(Register.statusD)] = 0x80  // valid RAM and time
    }

    public func read(offset: UInt16) -> UInt8 {
        guard offset == 1 else { return 0xff }  // the index register is write-only
        switch index {
        case Register.seconds, Register.minutes, Register.hours, Register.weekday, Register.day, Register.month,
             Register.year, Register.century:
            return bcd(timeField(index))
        case Register.statusC:
            return 0  // no interrupt flags; reading clears them
        default:
            return ram[Int(index)]
        }
    }

    public func write(offset: UInt16, value: UInt8) {
        if offset == 0 { index = value & 0x7f; return }  // bit 7 masks NMI on a PC: there is no NMI source here
        switch index {
        case Register.statusA: ram[Int(index)] = value & 0x7f
        case Register.statusB: ram[Int(index)] = (value & ~0x04) | 0x02  // BCD and 24-hour stay (the clock is the host's)
        case Register.statusC, Register.statusD: break  // read-only
        case Register.seconds, Register.minutes, Register.hours, Register.weekday, Register.day, Register.month,
             Register.year, Register.century:
            break  // setting the clock would set the host's: ignored
        default: ram[Int(index)] = value
        }
    }

    /// One field of the current UTC date and time.
    func timeField(_ register: UInt8) -> Int {
        let t = secondsSinceEpoch()
        let days = Int(t.quotientRounded(by: 86_400)), secs = Int(t - Int64(days) * 86_400)
        let (y, m, d) = Self.civil(fromDays: days)
        switch register {
        case Register.seconds: return secs % 60
        case Register.minutes: return secs / 60 % 60
        case Register.hours: return secs / 3600
        case Register.weekday: return ((days % 7 + 7 + 4) % 7) + 1  // 1970-01-01 was a Thursday; Sunday = 1
        case Register.day: return d
        case Register.month: return m
        case Register.year: return y % 100
        default: return y / 100
        }
    }

    /// Days since 1970-01-01 to a Gregorian date (Howard Hinnant's civil_from_days).
    static func civil(fromDays z0: Int) -> (year: Int, month: Int, day: Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    private func bcd(_ v: Int) -> UInt8 { UInt8(truncatingIfNeeded: (v / 10) << 4 | (v % 10)) }
}

extension Int64 {
    /// Floor division (rounds towards minus infinity, unlike `/`).
    fileprivate func quotientRounded(by d: Int64) -> Int64 { self >= 0 ? self / d : -((-self + d - 1) / d) }
}

extension CMOSRTC: Snapshotting {
    /// The index register and the RAM; the time registers are the host's clock, read live, so not state.
    public func save(to writer: inout SnapshotWriter) {
        writer.u8(index)
        writer.bytes(ram)
    }

    /// Refuses an index with the NMI bit (the write path masks it off, and it would index past the RAM), a RAM
    /// of any other size, and status registers the write paths never let the guest change.
    public func restore(from reader: inout SnapshotReader) throws(SnapshotError) {
        let index = try reader.u8()
        let ram = try reader.bytes(max: 128)
        guard index < 0x80 else { throw .invalid("CMOS index 0x\(String(index, radix: 16))") }
        guard ram.count == 128 else { throw .invalid("CMOS RAM of \(ram.count) bytes, not 128") }
        guard ram[Int(Register.statusA)] & 0x80 == 0, ram[Int(Register.statusB)] & 0x06 == 0x02,
              ram[Int(Register.statusD)] == 0x80
        else { throw .invalid("CMOS status registers changed where the guest cannot change them") }

        self.index = index
        self.ram = ram
    }
}
