// A device-side peer for the channel tests, in its own process. fds: 3 channel memory, 4 device doorbell,
// 5 response doorbell. Writes must carry data 0, 1, 2, ... in order; a read at address 1 answers how many
// writes arrived in order (or ~0 once one was lost or reordered); a read at address 2 answers and exits.
// Arguments: capacity, spin microseconds, and "slow" to make the peer lag (the ring fills up).
import Channel
import Glibc

let args = CommandLine.arguments
let capacity = args.count > 1 ? Int(args[1]) ?? 256 : 256
let spinUs = args.count > 2 ? Int(args[2]) ?? 50 : 50
let slow = args.count > 3 && args[3] == "slow"
let layout = ChannelLayout(lanes: 1, capacity: capacity)
let region = try ChannelRegion(attaching: 3, layout: layout)
var server = DeviceServer(region: region, deviceDoorbell: 4, responseDoorbells: [5],
                          policy: WaitPolicy(maxSpinMicroseconds: spinUs))
var expected: UInt64 = 0
var broken = false
while true {
    while let (lane, m) = try server.poll() {
        switch m.operation {
        case .portWrite, .mmioWrite:
            if m.data != expected { broken = true }
            expected += 1
            if slow && expected % 64 == 0 { usleep(200) }
        case .portRead, .mmioRead:
            try server.respond(lane: lane, to: m, data: broken ? ~0 : expected)
            if m.address == 2 { exit(0) }
        case .sync:
            try server.respond(lane: lane, to: m, data: 0)
        default:
            broken = true
        }
    }
    _ = try server.wait(extra: [])
}
