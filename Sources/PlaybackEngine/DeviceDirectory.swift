/// A user's known devices: who is online, what they are called, when they were last seen.
public struct DeviceDirectory: Sendable {
    public struct Record: Sendable, Equatable {
        public var name: String
        public var kind: DeviceKind
        public var online: Bool
        public var lastSeen: Int64
        /// Known capabilities from the device's `hello` (`Capability`).
        public var capabilities: [String] = []
        /// The connection's last measured round trip (ms), while online.
        public var rttMs: Int?
    }

    public private(set) var records: [String: Record] = [:]

    public init() {}

    /// The directory stored entries and their presence (device → online until, ms) make at `now`;
    /// offline devices last seen more than `retentionMs` ago are left out.
    public init(entries: [String: StoredDevice], presence: [String: Int64], now: Int64, retentionMs: Int64) {
        for (id, device) in entries {
            let online = (presence[id] ?? 0) > now
            if !online, now - device.lastSeen > retentionMs { continue }
            records[id] = Record(
                name: device.name, kind: device.kind, online: online, lastSeen: device.lastSeen,
                capabilities: device.capabilities ?? [], rttMs: online ? device.rttMs : nil)
        }
    }

    /// The directory a device list shows.
    public init(_ list: [DeviceInfo]) {
        for device in list {
            records[device.id] = Record(
                name: device.name, kind: device.kind, online: device.online, lastSeen: device.lastSeen,
                capabilities: device.capabilities ?? [], rttMs: device.rttMs)
        }
    }

    public var onlineCount: Int { records.values.lazy.filter(\.online).count }

    public func isOnline(_ id: String) -> Bool { records[id]?.online == true }

    public mutating func markOnline(id: String, name: String, kind: DeviceKind, capabilities: [String] = [], now: Int64) {
        records[id] = Record(name: name, kind: kind, online: true, lastSeen: now, capabilities: capabilities)
    }

    public mutating func markOffline(id: String, now: Int64) {
        records[id]?.online = false
        records[id]?.lastSeen = now
        records[id]?.rttMs = nil
    }

    /// Keeps the records of `ids`, devices connected to this node, as `known` has them online, where
    /// this directory (from a device list that may predate their join) has them missing or offline.
    public mutating func keepConnected(_ ids: some Sequence<String>, as known: DeviceDirectory) {
        for id in ids where records[id]?.online != true {
            if let record = known.records[id], record.online { records[id] = record }
        }
    }

    /// Records the round trips of connected devices (device → ms).
    public mutating func setRoundTrips(_ rtts: [String: Int]) {
        for (id, rtt) in rtts where records[id]?.online == true { records[id]?.rttMs = rtt }
    }

    /// The online devices that confirm the start of a transfer, for the reducer.
    public var confirmingDevices: Set<String> {
        Set(records.lazy.filter { $0.value.online && $0.value.capabilities.contains(Capability.transferConfirm) }.map(\.key))
    }

    /// Forgets devices offline for longer than `retentionMs`, then, past `cap` devices, the offline
    /// ones seen longest ago (the storages' rule when a device joins).
    public mutating func prune(now: Int64, retentionMs: Int64, cap: Int) {
        records = records.filter { $0.value.online || now - $0.value.lastSeen <= retentionMs }
        let excess = records.count - cap
        guard excess > 0 else { return }
        let oldest = records.filter { !$0.value.online }.sorted { $0.value.lastSeen < $1.value.lastSeen }.prefix(excess)
        for (id, _) in oldest { records[id] = nil }
    }

    /// Presence as the reducer needs it.
    public var presence: [String: DevicePresence] {
        records.mapValues { $0.online ? .online : .offline }
    }

    /// The wire list, online devices first, then by name, with their state in `playback`: which
    /// one is active, each one's volume.
    public func list(for playback: Playback) -> [DeviceInfo] {
        records.map { id, record in
            DeviceInfo(
                id: id, name: record.name, kind: record.kind, online: record.online, active: id == playback.activeDevice,
                lastSeen: record.lastSeen, volumePercent: playback.volume(of: id), rttMs: record.online ? record.rttMs : nil,
                capabilities: record.capabilities)
        }.sorted { ($0.online ? 0 : 1, $0.name, $0.id) < ($1.online ? 0 : 1, $1.name, $1.id) }
    }
}
