/// A command any device of a user (or the REST API) may send: the `op` and `args` of a
/// `command` message, typed.
public enum Command: Sendable, Equatable {
    case play(Play)
    case pause
    case resume
    case next
    case previous
    case seek(positionMs: Int64)
    /// The active device's volume, or `device`'s own.
    case volume(percent: Int, device: String? = nil)
    case setRepeat(RepeatMode)
    case setShuffle(Bool)
    case queueAdd(trackID: String, at: QueuePlacement)
    case queueRemove(entry: String)
    case queueMove(entry: String, to: Int)
    case queueClear
    case transfer(device: String, play: Bool?)

    /// Arguments of `play`. With no track, list or context it resumes what is loaded.
    public struct Play: Codable, Sendable, Equatable {
        public var trackID: String?
        public var trackIDs: [String]?
        public var context: PlaybackContext?
        public var positionMs: Int64?
        public var device: String?

        public init(
            trackID: String? = nil, trackIDs: [String]? = nil, context: PlaybackContext? = nil,
            positionMs: Int64? = nil, device: String? = nil
        ) {
            self.trackID = trackID
            self.trackIDs = trackIDs
            self.context = context
            self.positionMs = positionMs
            self.device = device
        }

        var loadsSomething: Bool { trackID != nil || trackIDs != nil || context != nil }

        enum CodingKeys: String, CodingKey {
            case context, device
            case trackID = "track_id"
            case trackIDs = "track_ids"
            case positionMs = "position_ms"
        }
    }

    /// Where `queue_add` puts the entry among the user-queued ones.
    public enum QueuePlacement: String, Codable, Sendable {
        case next, end
    }

    /// The wire names of the ops.
    public enum Op: String, Codable, Sendable, CaseIterable {
        case play, pause, resume, next, previous, seek, volume, `repeat`, shuffle
        case queueAdd = "queue_add"
        case queueRemove = "queue_remove"
        case queueMove = "queue_move"
        case queueClear = "queue_clear"
        case transfer
    }

    public var op: Op {
        switch self {
        case .play: .play
        case .pause: .pause
        case .resume: .resume
        case .next: .next
        case .previous: .previous
        case .seek: .seek
        case .volume: .volume
        case .setRepeat: .repeat
        case .setShuffle: .shuffle
        case .queueAdd: .queueAdd
        case .queueRemove: .queueRemove
        case .queueMove: .queueMove
        case .queueClear: .queueClear
        case .transfer: .transfer
        }
    }
}

// MARK: - Wire form of op + args

extension Command {
    private struct SeekArgs: Codable { var position_ms: Int64 }
    private struct VolumeArgs: Codable { var percent: Int; var device: String? }
    private struct RepeatArgs: Codable { var mode: RepeatMode }
    private struct ShuffleArgs: Codable { var on: Bool }
    private struct QueueAddArgs: Codable { var track_id: String; var at: QueuePlacement? }
    private struct EntryArgs: Codable { var entry: String }
    private struct QueueMoveArgs: Codable { var entry: String; var to: Int }
    private struct TransferArgs: Codable { var device: String; var play: Bool? }

    /// Decodes the `args` of `op` from `container[key]`; ops without arguments ignore `args`.
    init<Key: CodingKey>(op: Op, args container: KeyedDecodingContainer<Key>, key: Key) throws {
        func args<A: Decodable>(_ type: A.Type) throws -> A {
            try container.decode(A.self, forKey: key)
        }
        switch op {
        case .play: self = .play(try container.decodeIfPresent(Play.self, forKey: key) ?? Play())
        case .pause: self = .pause
        case .resume: self = .resume
        case .next: self = .next
        case .previous: self = .previous
        case .seek: self = .seek(positionMs: try args(SeekArgs.self).position_ms)
        case .volume:
            let a = try args(VolumeArgs.self)
            self = .volume(percent: a.percent, device: a.device)
        case .repeat: self = .setRepeat(try args(RepeatArgs.self).mode)
        case .shuffle: self = .setShuffle(try args(ShuffleArgs.self).on)
        case .queueAdd:
            let a = try args(QueueAddArgs.self)
            self = .queueAdd(trackID: a.track_id, at: a.at ?? .end)
        case .queueRemove: self = .queueRemove(entry: try args(EntryArgs.self).entry)
        case .queueMove:
            let a = try args(QueueMoveArgs.self)
            self = .queueMove(entry: a.entry, to: a.to)
        case .queueClear: self = .queueClear
        case .transfer:
            let a = try args(TransferArgs.self)
            self = .transfer(device: a.device, play: a.play)
        }
    }

    /// Encodes `args` into `container[key]`; ops without arguments write nothing.
    func encodeArgs<Key: CodingKey>(into container: inout KeyedEncodingContainer<Key>, key: Key) throws {
        switch self {
        case .play(let play): try container.encode(play, forKey: key)
        case .pause, .resume, .next, .previous, .queueClear: break
        case .seek(let position): try container.encode(SeekArgs(position_ms: position), forKey: key)
        case .volume(let percent, let device): try container.encode(VolumeArgs(percent: percent, device: device), forKey: key)
        case .setRepeat(let mode): try container.encode(RepeatArgs(mode: mode), forKey: key)
        case .setShuffle(let on): try container.encode(ShuffleArgs(on: on), forKey: key)
        case .queueAdd(let trackID, let at):
            try container.encode(QueueAddArgs(track_id: trackID, at: at), forKey: key)
        case .queueRemove(let entry): try container.encode(EntryArgs(entry: entry), forKey: key)
        case .queueMove(let entry, let to): try container.encode(QueueMoveArgs(entry: entry, to: to), forKey: key)
        case .transfer(let device, let play):
            try container.encode(TransferArgs(device: device, play: play), forKey: key)
        }
    }
}
