/// The connected devices of one user on this node, and delivery of messages to them.
public struct LocalDevices: Sendable {
    private var sinks: [String: any DeviceSink] = [:]
    /// The newest version each device was sent (its welcome's, then each state): a state is never
    /// sent twice to a device (a recovery racing the welcome would repeat it).
    private var versions: [String: Int64] = [:]

    public init() {}

    public var isEmpty: Bool { sinks.isEmpty }
    public var deviceIDs: Dictionary<String, any DeviceSink>.Keys { sinks.keys }
    public var count: Int { sinks.count }

    public func sink(for device: String) -> (any DeviceSink)? { sinks[device] }

    /// Attaches a device's connection, welcomed at `version`; returns the connection it replaces, if any.
    public mutating func attach(_ sink: any DeviceSink, device: String, version: Int64 = -1) -> (any DeviceSink)? {
        versions[device] = version
        return sinks.updateValue(sink, forKey: device)
    }

    /// Detaches a device's connection if it is still the current one for the device.
    public mutating func detach(device: String, sessionID: String) -> Bool {
        guard sinks[device]?.sessionID == sessionID else { return false }
        sinks[device] = nil
        versions[device] = nil
        return true
    }

    public func send(_ message: EncodedMessage, to device: String) {
        sinks[device]?.send(message)
    }

    public func broadcast(_ message: EncodedMessage, except excluded: String? = nil) {
        for (device, sink) in sinks where device != excluded { sink.send(message) }
    }

    /// Delivers a committed change: lease messages first, then the state to every device
    /// (or to `only` that one).
    public mutating func deliver(_ event: PreparedEvent, only: String? = nil) {
        if let revoked = event.revoked, only == nil || only == revoked.device { send(revoked.message, to: revoked.device) }
        if let granted = event.granted, only == nil || only == granted.device { send(granted.message, to: granted.device) }
        for (device, sink) in sinks where only == nil || only == device {
            guard versions[device, default: -1] < event.version else { continue }
            versions[device] = event.version
            sink.send(event.state)
        }
    }
}
