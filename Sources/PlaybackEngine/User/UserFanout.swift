import Foundation
import NIOCore
import PlaybackCore

/// The devices of one user connected to this node, fed from the user's pub/sub channel in
/// channel order. A device that is being welcomed is not fed directly: what arrives meanwhile is
/// buffered and flushed after its `welcome`, minus what the welcome already contained.
///
/// While it exists (the node is subscribed to the user's channel) it also keeps what the node
/// knows of the user: the newest playback (from the node's own commits, conflict replies and the
/// stored playback every change frame carries, decoded only when a command needs it) and the
/// device directory (from device lists on the channel). Commands run on it without reading Redis;
/// the commit's version check catches a cache that is behind.
///
/// It belongs to the user's `UserPlayback` and is touched on the user's event loop only.
final class UserFanout {
    private struct Waiting {
        var sink: any DeviceSink
        var buffer: [BusMessage] = []
    }

    private struct State {
        var devices = LocalDevices()
        var waiting: [String: Waiting] = [:]
        /// The newest version seen on the channel (to tell a cached state is stale).
        var latestVersion: Int64 = -1
        /// The local device this node last told that it holds the lease, and at which epoch.
        var holder: (device: String, epoch: Int64)?
        /// The newest playback known here, decoded; nil until loaded.
        var playback: (value: Playback, json: ByteBuffer?)?
        /// A newer playback from the channel, not decoded yet.
        var undecoded: (version: Int64, json: ByteBuffer)?
        /// The user's devices; nil until loaded.
        var directory: DeviceDirectory? {
            didSet { directoryChanges &+= 1 }
        }
        /// Counts the changes of `directory`: a directory read from the storage is kept only if
        /// nothing changed it while the read was on its way (`remember(directory:readAt:)`).
        var directoryChanges: UInt64 = 0
        /// The newest playback this node knew when it last forgot its cache (the bus or the storage
        /// was interrupted), and when: if the storage lost the user, this node offers it for the
        /// restore (the newest state any node saw wins).
        var lastKnown: (playback: Playback, at: Int64)?
        /// A device list to send at the end of this event-loop turn, and the device that does not
        /// need it (its welcome has it): several lists in one turn (devices connecting together,
        /// a reconnect storm) go out as one, the newest.
        var pendingDevices: (list: [DeviceInfo], except: String?)?
        /// Commands of this node waiting for a change above a version (another node's turn).
        var changeWaiters: [(id: UInt64, above: Int64, wake: @Sendable () -> Void)] = []
        var lastWaiter: UInt64 = 0

        mutating func remember(_ playback: Playback, json: ByteBuffer?) {
            if let known = self.playback, known.value.version > playback.version { return }
            if let pending = undecoded, pending.version > playback.version { return }
            self.playback = (playback, json)
            undecoded = nil
        }

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

    private var state = State()
    /// The user's loop, where device lists are flushed at the end of a turn (nil: at once).
    private let loop: (any EventLoop)?

    init(loop: (any EventLoop)? = nil) {
        self.loop = loop
    }

    var latestVersion: Int64 { state.latestVersion }

    /// The cached playback and directory, or nil when not loaded. A playback that came on the
    /// channel is decoded here, once.
    func cached() -> (playback: Playback, directory: DeviceDirectory)? {
        guard let playback = state.playback, let directory = state.directory else { return nil }
        guard let (version, json) = state.undecoded else { return (playback.value, directory) }
        guard let decoded = try? JSONDecoder().decode(Playback.self, from: Data(json.readableBytesView)), decoded.version == version else {
            // Unreadable: forget it; the next command loads the playback from Redis.
            state.playback = nil
            state.undecoded = nil
            return nil
        }
        state.remember(decoded, json: json)
        return (decoded, directory)
    }

    /// The cached playback without decoding a newer one (its version, epoch and holder are what
    /// the upkeep needs, and those a newer frame carries too).
    var cachedPlayback: Playback? { state.undecoded == nil ? state.playback?.value : nil }

    /// Remembers a playback read or written by this node (kept only when it is the newest known).
    func remember(_ playback: Playback, json: ByteBuffer? = nil) {
        state.remember(playback, json: json)
    }

    /// Remembers the directory as this node changed it (a join or leave it just wrote).
    func remember(directory: DeviceDirectory) {
        state.directory = directory
    }

    /// Where the directory stands now, to pass to `remember(directory:readAt:)` with what a read
    /// started now returns.
    var directoryMark: UInt64 { state.directoryChanges }

    /// Remembers a directory read from the storage, unless the directory changed since `mark` (a
    /// join, a leave or a device list from the bus, which the read may predate); false then.
    @discardableResult
    func remember(directory: DeviceDirectory, readAt mark: UInt64) -> Bool {
        guard state.directoryChanges == mark else { return false }
        state.directory = directory
        return true
    }

    /// Forgets what is cached (after a pub/sub outage: changes may have been missed), keeping the
    /// newest playback it held as `lastKnown`.
    func forgetCache(at now: Int64) {
        let newest = cached()?.playback ?? cachedPlayback
        if let newest, newest.contentVersion > (state.lastKnown?.playback.contentVersion ?? -1) { state.lastKnown = (newest, now) }
        state.playback = nil
        state.undecoded = nil
        state.directory = nil
    }

    /// The newest playback this node held before it last forgot its cache, and when.
    var lastKnown: (playback: Playback, at: Int64)? { state.lastKnown }
    var isEmpty: Bool { state.devices.isEmpty && state.waiting.isEmpty }

    /// The highest epoch and version seen here (cached state, the channel, grants).
    var highWater: (epoch: Int64, version: Int64) {
        let epoch = max(state.playback?.value.epoch ?? 0, state.holder?.epoch ?? 0)
        let version = max(state.playback?.value.version ?? 0, state.latestVersion, state.undecoded?.version ?? 0)
        return (epoch, version)
    }

    /// Each device connected here with the session of its connection (remote controls are no devices).
    var connectedSessions: [(device: String, session: String)] {
        state.devices.deviceIDs.compactMap { id in
            RemoteControl.isKey(id) ? nil : state.devices.sink(for: id).map { (id, $0.sessionID) }
        }
    }

    func hasDevice(_ device: String) -> Bool { state.devices.sink(for: device) != nil }

    /// The last measured round trip of each connected device here that has one (device → ms).
    var roundTrips: [String: Int] {
        var rtts: [String: Int] = [:]
        for id in state.devices.deviceIDs where !RemoteControl.isKey(id) {
            if let rtt = state.devices.sink(for: id)?.roundTripMs { rtts[id] = rtt }
        }
        return rtts
    }

    /// Updates the cached directory's round trips of local devices.
    func remember(roundTrips: [String: Int]) {
        state.directory?.setRoundTrips(roundTrips)
    }

    /// Starts buffering for a device about to be welcomed; returns a connection it replaces here.
    func beginWelcome(_ sink: any DeviceSink, device: String) -> (any DeviceSink)? {
        let replaced = state.devices.sink(for: device) ?? state.waiting[device]?.sink
        if replaced != nil { _ = state.devices.detach(device: device, sessionID: replaced?.sessionID ?? "") }
        state.waiting[device] = Waiting(sink: sink)
        return replaced
    }

    /// Sends `welcome`, then what arrived meanwhile and is newer than it, and attaches the device.
    /// `active`: the welcome shows the device holding the lease.
    func finishWelcome(device: String, sessionID: String, welcome: EncodedMessage, version: Int64, epoch: Int64, active: Bool) {
        guard let waiting = state.waiting[device], waiting.sink.sessionID == sessionID else { return }
        state.waiting[device] = nil
        waiting.sink.send(welcome)
        _ = state.devices.attach(waiting.sink, device: device, version: version)
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

    /// Forgets a device's connection if it is still the current one.
    func detach(device: String, sessionID: String) -> Bool {
        if let waiting = state.waiting[device], waiting.sink.sessionID == sessionID {
            state.waiting[device] = nil
            return true
        }
        guard state.devices.detach(device: device, sessionID: sessionID) else { return false }
        if state.holder?.device == device { state.holder = nil }
        return true
    }

    /// A message from the user's channel. Lease messages lost with the channel (while the pub/sub
    /// connection or Redis was down) are made up for: a local device told it holds the lease that
    /// no longer does gets `lease_revoked` here, and the local device that holds the lease at an
    /// epoch it was never told about is returned: the caller grants it again with the full state.
    @discardableResult
    func receive(_ message: BusMessage) -> String? {
        let flushLater = message.devices != nil && state.pendingDevices == nil
        let regrant = receiveNow(message)
        if let version = message.event?.version, !state.changeWaiters.isEmpty {
            let woken = state.changeWaiters.filter { $0.above < version }.map(\.wake)
            state.changeWaiters.removeAll { $0.above < version }
            for wake in woken { wake() }
        }
        if flushLater {
            if let loop {
                let fanout = NIOLoopBound(self, eventLoop: loop)
                loop.execute { fanout.value.flushDevices() }
            } else {
                flushDevices()
            }
        }
        return regrant
    }

    /// Calls `wake` when a change above `version` comes on the channel, at once when one has (a
    /// command waiting for another node's turn to end starts again when that turn's commit
    /// arrives). Each waiter also has a timer of its own, which calls `forgetWaiter` with the
    /// number returned (nil: woken at once); past the newest 256, the oldest is dropped unwoken.
    @discardableResult
    func whenChanged(above version: Int64, _ wake: @escaping @Sendable () -> Void) -> UInt64? {
        if max(state.latestVersion, state.undecoded?.version ?? -1, state.playback?.value.version ?? -1) > version {
            wake()
            return nil
        }
        if state.changeWaiters.count >= 256 { state.changeWaiters.removeFirst() }
        state.lastWaiter &+= 1
        state.changeWaiters.append((state.lastWaiter, version, wake))
        return state.lastWaiter
    }

    /// Drops a waiter of `whenChanged` whose timer came first.
    func forgetWaiter(_ id: UInt64) {
        state.changeWaiters.removeAll { $0.id == id }
    }

    /// Sends the device list that came in this turn.
    private func flushDevices() {
        guard let pending = state.pendingDevices else { return }
        state.pendingDevices = nil
        state.devices.broadcast(EncodedMessage(.devices(pending.list)), except: pending.except)
    }

    private func receiveNow(_ message: BusMessage) -> String? {
        var regrant: String?
        for device in state.waiting.keys { state.waiting[device]?.buffer.append(message) }
        if let event = message.event, let json = message.stored,
            event.version > max(state.playback?.value.version ?? -1, state.undecoded?.version ?? -1)
        {
            state.undecoded = (event.version, json)
        }
        if let devices = message.devices, let known = state.directory {
            // A list can be older than what this node did since (its own join's list still on the
            // way while the next device joined): a device connected here stays as this node knows it.
            var directory = DeviceDirectory(devices)
            let connected = (Array(state.devices.deviceIDs) + Array(state.waiting.keys)).filter { !RemoteControl.isKey($0) }
            directory.keepConnected(connected, as: known)
            state.directory = directory
        }
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
            state.devices.deliver(event)
            state.track(event)
        }
        if let devices = message.devices {
            // A later list in the same turn replaces it; the device its welcome gave the newest list skips it.
            state.pendingDevices = (devices, message.except)
        }
        if let replacement = message.replace, let sink = state.devices.sink(for: replacement.device),
            sink.sessionID != replacement.session
        {
            sink.close(.replaced, reason: "replaced by a newer connection of this device")
        }
        return regrant
    }

    /// Whether the local `device` has not been told it holds the lease at `epoch`.
    func needsGrant(_ device: String, epoch: Int64) -> Bool {
        state.needsGrant(device, epoch: epoch)
    }

    /// Tells a local device it holds the lease at `epoch` (once per epoch).
    func grant(_ message: EncodedMessage, to device: String, epoch: Int64) {
        guard state.needsGrant(device, epoch: epoch) else { return }
        state.devices.send(message, to: device)
        state.holder = (device, epoch)
    }
}
