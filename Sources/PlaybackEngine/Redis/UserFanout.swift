import PlaybackCore
import Synchronization

/// The devices of one user connected to this node, fed from the user's pub/sub channel in
/// channel order. A device that is being welcomed is not fed directly: what arrives meanwhile is
/// buffered and flushed after its `welcome`, minus what the welcome already contained.
final class UserFanout: Sendable {
    private struct Waiting {
        var sink: any DeviceSink
        var buffer: [BusMessage] = []
    }

    private struct State {
        var devices = LocalDevices()
        var waiting: [String: Waiting] = [:]
        /// The newest version seen on the channel (to tell a cached state is stale).
        var latestVersion: Int64 = -1
        /// The newest epoch seen here (in a welcome or on the channel).
        var latestEpoch: Int64 = -1
        /// The local device this node last told that it holds the lease, and at which epoch.
        var holder: (device: String, epoch: Int64)?

        /// Whether local `device` has yet to be told that it holds the lease at `epoch`.
        func needsGrant(_ device: String, epoch: Int64) -> Bool {
            devices.sink(for: device) != nil && (holder.map { $0.device != device || $0.epoch < epoch } ?? true)
        }

        /// Follows what `event` tells the local devices about the lease.
        mutating func track(_ event: PreparedEvent) {
            if let revoked = event.revoked, holder?.device == revoked.device { holder = nil }
            if let granted = event.granted, devices.sink(for: granted.device) != nil { holder = (granted.device, event.epoch) }
        }
    }

    private let state = Mutex(State())

    var latestVersion: Int64 { state.withLock { $0.latestVersion } }
    var isEmpty: Bool { state.withLock { $0.devices.isEmpty && $0.waiting.isEmpty } }
    var connectedDevices: [String] { state.withLock { Array($0.devices.deviceIDs) } }

    func hasDevice(_ device: String) -> Bool { state.withLock { $0.devices.sink(for: device) != nil } }

    /// The session of the device's connection here, if it is connected here.
    func sessionID(of device: String) -> String? { state.withLock { $0.devices.sink(for: device)?.sessionID } }

    /// Starts buffering for a device about to be welcomed; returns a connection it replaces here.
    func beginWelcome(_ sink: any DeviceSink, device: String) -> (any DeviceSink)? {
        state.withLock { state in
            let replaced = state.devices.sink(for: device) ?? state.waiting[device]?.sink
            if replaced != nil { _ = state.devices.detach(device: device, sessionID: replaced?.sessionID ?? "") }
            state.waiting[device] = Waiting(sink: sink)
            return replaced
        }
    }

    /// Sends `welcome`, then what arrived meanwhile and is newer than it, and attaches the device.
    /// `active`: the welcome shows the device holding the lease.
    func finishWelcome(device: String, sessionID: String, welcome: EncodedMessage, version: Int64, epoch: Int64, active: Bool) {
        state.withLock { state in
            state.latestEpoch = max(state.latestEpoch, epoch)
            guard let waiting = state.waiting[device], waiting.sink.sessionID == sessionID else { return }
            state.waiting[device] = nil
            waiting.sink.send(welcome)
            _ = state.devices.attach(waiting.sink, device: device)
            if active { state.holder = (device, epoch) }
            for message in waiting.buffer {
                if let event = message.event, event.version > version {
                    state.devices.deliver(event, only: device)
                    state.track(event)
                } else if let devices = message.devices, message.except != device {
                    state.devices.send(EncodedMessage(.devices(devices)), to: device)
                }
            }
        }
    }

    /// Forgets a device's connection if it is still the current one.
    func detach(device: String, sessionID: String) -> Bool {
        state.withLock { state in
            if let waiting = state.waiting[device], waiting.sink.sessionID == sessionID {
                state.waiting[device] = nil
                return true
            }
            guard state.devices.detach(device: device, sessionID: sessionID) else { return false }
            if state.holder?.device == device { state.holder = nil }
            return true
        }
    }

    /// A message from the user's channel. Lease messages lost with the channel (while the pub/sub
    /// connection or Redis was down) are made up for: a local device told it holds the lease that
    /// no longer does gets `lease_revoked` here, and the local device that holds the lease at an
    /// epoch it was never told about is returned: the caller grants it again with the full state.
    @discardableResult
    func receive(_ message: BusMessage) -> String? {
        state.withLock { state in
            var regrant: String?
            for device in state.waiting.keys { state.waiting[device]?.buffer.append(message) }
            // A version already delivered comes again only from a recovery racing the channel: dropped.
            if let event = message.event, event.version > state.latestVersion {
                if let holder = state.holder, holder.device != event.activeDevice, event.revoked?.device != holder.device {
                    let reason: LeaseReason = event.activeDevice == nil ? .expired : .transferred
                    state.devices.send(
                        EncodedMessage(.leaseRevoked(.init(epoch: event.epoch, reason: reason, by: event.activeDevice))), to: holder.device)
                    state.holder = nil
                }
                if event.granted == nil, let active = event.activeDevice, state.needsGrant(active, epoch: event.epoch) {
                    regrant = active
                }
                state.latestVersion = max(state.latestVersion, event.version)
                state.latestEpoch = max(state.latestEpoch, event.epoch)
                state.devices.deliver(event)
                state.track(event)
            }
            if let devices = message.devices {
                state.devices.broadcast(EncodedMessage(.devices(devices)), except: message.except)
            }
            if let replacement = message.replace, let sink = state.devices.sink(for: replacement.device),
                sink.sessionID != replacement.session
            {
                sink.close(.replaced, reason: "replaced by a newer connection of this device")
            }
            return regrant
        }
    }

    /// Sends a message to one local device.
    func send(_ message: EncodedMessage, to device: String) {
        state.withLock { $0.devices.send(message, to: device) }
    }

    /// Whether the local `device` has not been told it holds the lease at `epoch`.
    func needsGrant(_ device: String, epoch: Int64) -> Bool {
        state.withLock { $0.needsGrant(device, epoch: epoch) }
    }

    /// Tells a local device it holds the lease at `epoch` (once per epoch).
    func grant(_ message: EncodedMessage, to device: String, epoch: Int64) {
        state.withLock { state in
            guard state.needsGrant(device, epoch: epoch) else { return }
            state.devices.send(message, to: device)
            state.holder = (device, epoch)
        }
    }

    func closeAll(_ code: CloseCode, reason: String) {
        state.withLock { $0.devices.closeAll(code, reason: reason) }
    }
}
