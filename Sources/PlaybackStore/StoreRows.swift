import Foundation
import PlaybackCore
import PostgresNIO

/// A user as the users table has it.
public struct StoredUser: Sendable, Equatable {
    public var id: String
    public var country: String?
    public var tier: String?

    public init(id: String, country: String?, tier: String?) {
        self.id = id
        self.country = country
        self.tier = tier
    }
}

public struct StoredDeviceRow: Sendable, Equatable {
    public var userID: String
    public var deviceID: String
    public var name: String
    public var kind: String
    public var lastSeen: Int64

    public init(userID: String, deviceID: String, name: String, kind: String, lastSeen: Int64) {
        self.userID = userID
        self.deviceID = deviceID
        self.name = name
        self.kind = kind
        self.lastSeen = lastSeen
    }
}

/// A user's playback as last written: epoch, version and the full `Playback` as JSON.
public struct PlaybackSnapshot: Sendable, Equatable {
    public var userID: String
    public var epoch: Int64
    public var version: Int64
    public var stateJSON: String
    /// Server time (ms) the snapshot was taken.
    public var takenAt: Int64

    public init(userID: String, epoch: Int64, version: Int64, stateJSON: String, takenAt: Int64) {
        self.userID = userID
        self.epoch = epoch
        self.version = version
        self.stateJSON = stateJSON
        self.takenAt = takenAt
    }
}

/// One play of play history, with the device's kind.
public struct HistoryRow: Sendable, Equatable {
    public var userID: String
    public var record: PlayRecord
    public var deviceKind: String?

    public init(userID: String, record: PlayRecord, deviceKind: String?) {
        self.userID = userID
        self.record = record
        self.deviceKind = deviceKind
    }

    var contextURI: String { record.context?.uri ?? "" }
}

extension PlaybackContext {
    /// `kind:id`, or `kind` for a context without an id (`list`).
    public var uri: String { id.map { "\(kind):\($0)" } ?? kind }

    /// Parses `uri`.
    public init?(uri: String) {
        guard !uri.isEmpty else { return nil }
        guard let colon = uri.firstIndex(of: ":") else {
            self.init(kind: uri, id: nil)
            return
        }
        self.init(kind: String(uri[..<colon]), id: String(uri[uri.index(after: colon)...]))
    }
}

extension Array {
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
