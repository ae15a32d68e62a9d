/// The connected devices of one user on this node, and delivery of messages to them.
public struct LocalDevices: Sendable {
    private var sinks: [String: any DeviceSink] = [:]

    public init() {}

    public var isEmpty: Bool { sinks.isEmpty }
    public var deviceIDs: Dictionary<String, any DeviceSink>.Keys { sinks.keys }
    public var count: Int { sinks.count }

    public func sink(for device: String) -> (any DeviceSink)? { sinks[device] }

    /// Attaches a device's connection; returns the connection it replaces, if any.
    public mutating func attach(_ sink: any DeviceSink, device: String) -> (any DeviceSink)? {
        sinks.updateValue(sink, forKey: device)
    }

    /// Detaches a device's connection if it is still the current one for the device.
    public mutating func detach(device: String, sessionID: String) -> Bool {
        guard sinks[device]?.sessionID == sessionID else { return false }
        sinks[device] = nil
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
    public func deliver(_ event: PreparedEvent, only: String? = nil) {
        if let revoked = event.revoked, only == nil || only == revoked.device { send(revoked.message, to: revoked.device) }
        if let granted = event.granted, only == nil || only == granted.device { send(granted.message, to: granted.device) }
        if let only {
            send(event.state, to: only)
        } else {
            broadcast(event.state)
        }
    }
}
