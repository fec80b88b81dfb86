import Channel
import Devices
import IRQChipLink

/// A device's interrupt line as the device process drives it: posted level changes on its own lane of the
/// irqchip's lines channel (the irqchip maps the lane to the device's pin). Only changes travel.
final class ChannelLine: InterruptLine {
    private var client: DeviceClient
    private var level: Bool?

    init(_ spec: InterruptLineSpec, policy: WaitPolicy) throws {
        let region = try ChannelRegion(attaching: spec.channel.memoryFD, layout: spec.channel.layout)
        client = DeviceClient(region: region, lane: spec.lane, deviceDoorbell: spec.channel.deviceDoorbellFD,
                              responseDoorbell: spec.channel.responseDoorbellFDs[spec.lane], policy: policy, timeoutMs: 1000)
    }

    func set(_ asserted: Bool) {
        guard asserted != level else { return }
        do {
            try client.post(.lineLevel, size: 1, address: 0, data: asserted ? 1 : 0)
            level = asserted
        } catch {
            Log.warning("interrupt line: \(error)")
        }
    }
}
