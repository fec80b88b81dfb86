import Channel
import System

/// A device channel as the supervisor creates it: shared memory and doorbells, handed to both sides.
final class ChannelPlan {
    let layout: ChannelLayout
    let memory: FileDescriptor
    /// The supervisor's own view, for counting what a device has not handled yet when the VM stops.
    let region: ChannelRegion
    let deviceDoorbell: EventFD
    private let responseDoorbellBoxes: [EventFD.Box]
    var responseDoorbells: [Int32] { responseDoorbellBoxes.map(\.raw) }

    init(name: String, lanes: Int) throws {
        layout = ChannelLayout(lanes: lanes)
        memory = try ChannelRegion.create(layout: layout, name: name)
        region = try ChannelRegion(attaching: memory.raw, layout: layout)
        deviceDoorbell = try EventFD()
        responseDoorbellBoxes = try (0..<lanes).map { _ in EventFD.Box(try EventFD()) }
    }

    /// The channel's descriptors added to a child's list, as that child will number them.
    func spec(_ fds: inout FDList) -> ChannelSpec {
        ChannelSpec(memoryFD: fds.add(memory.raw, owner: self), lanes: layout.lanes, capacity: layout.ring.capacity,
                    stateSize: layout.stateSize, deviceDoorbellFD: fds.add(deviceDoorbell.raw, owner: self),
                    responseDoorbellFDs: responseDoorbells.map { fds.add($0, owner: self) })
    }
}

/// Descriptors for a child, in the order they will be numbered there (3, 4, ...). The list keeps the objects that
/// own them alive until the child has its copies: an optimised build may otherwise release an owner (and close its
/// descriptor) right after its number was taken, long before the spawn.
struct FDList {
    private(set) var fds: [Int32] = []
    private var owners: [AnyObject] = []
    mutating func add(_ fd: Int32, owner: AnyObject? = nil) -> Int32 {
        fds.append(fd)
        if let owner { owners.append(owner) }
        return Int32(2 + fds.count)
    }
}
