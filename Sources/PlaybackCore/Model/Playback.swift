/// One user's complete playback: what `PlayerState` shows plus what the reducer needs to
/// step through a context (original order, play order, cursor) and to mint entry ids.
///
/// This is the value the engines store; `playerState(includeQueue:)` derives the wire view.
/// The small fields come first so that comparing two states usually stops early.
public struct Playback: Codable, Sendable, Equatable {
    /// The item being played, and where it came from.
    public struct Current: Codable, Sendable, Equatable {
        public var entry: String
        public var source: EntrySource
        public var track: Track

        public init(entry: String, source: EntrySource, track: Track) {
            self.entry = entry
            self.source = source
            self.track = track
        }
    }

    public var epoch: Int64 = 0
    public var version: Int64 = 0
    public var activeDevice: String?
    public var current: Current?
    public var isPlaying = false
    public var positionMs: Int64 = 0
    public var positionAt: Int64 = 0
    public var volume = 100
    public var repeatMode: RepeatMode = .off
    public var shuffle = false
    public var context: PlaybackContext?
    /// Index in `playOrder` of the last context entry played; -1 before the first.
    public var cursor = -1
    /// The number the next entry id is made from.
    public var nextEntry: Int64 = 1
    /// Entries the user queued; they play before the rest of the context.
    public var userQueue: [QueueEntry] = []
    /// Context entry ids in the order they play (equal to `contextOrder` unless shuffled).
    public var playOrder: [String] = []
    /// Context entry ids in the context's own order (restored when shuffle is turned off).
    public var contextOrder: [String] = []
    /// Tracks of the context by entry id.
    public var contextTracks: [String: Track] = [:]
    /// The play in progress, for play history; nil when nothing is loaded.
    public var listening: Listening?
    /// Each device's own volume, remembered across transfers (`volume` is the active device's).
    /// nil until a volume is set or the lease moves; only devices of the user's directory.
    public var deviceVolumes: [String: Int]?
    /// A transfer to a device that confirms its start (`transfer_confirm`) waiting for that
    /// confirmation; nil otherwise. `activeDevice` is the target.
    public var pendingTransfer: PendingTransfer?

    /// Set when this playback was put back from a snapshot after the storage lost it: which
    /// snapshot, so that when several nodes restore one user the newest snapshot any of them holds
    /// wins. Commits keep it as it was; `at` then no longer equals `version`.
    public var restoredFrom: RestoreMark?

    /// Where a restored playback came from.
    public struct RestoreMark: Codable, Sendable, Equatable {
        /// The version of the snapshot it was restored from (before the jump above the marks);
        /// -1 when there was none (an empty playback above the clock).
        public var source: Int64
        /// The version it was restored at.
        public var at: Int64
        /// Server time (ms) until which nothing commits on top of it, so that a node holding a
        /// newer snapshot can still put that in its place; 0 when it settled at once.
        public var settlesAt: Int64

        public init(source: Int64, at: Int64, settlesAt: Int64 = 0) {
            self.source = source
            self.at = at
            self.settlesAt = settlesAt
        }

        enum CodingKeys: String, CodingKey {
            case source, at
            case settlesAt = "settles_at"
        }
    }

    /// The version of the content this playback holds on the version line before the storage
    /// lost it: its snapshot's for a restore nothing has committed on top of, its own otherwise.
    public var contentVersion: Int64 {
        guard let restoredFrom, restoredFrom.at == version else { return version }
        return restoredFrom.source
    }

    /// How long (ms) from `now` this restored playback still waits for a newer snapshot before
    /// anything commits on top of it; 0 when it is not a restore, or settled.
    public func settling(at now: Int64) -> Int64 {
        guard let restoredFrom, restoredFrom.at == version else { return 0 }
        return max(0, restoredFrom.settlesAt - now)
    }

    /// Whether this is a restored playback nothing has committed on top of, from a snapshot older
    /// than version `source`: a node holding that newer snapshot may put it in its place.
    public func isRestore(olderThan source: Int64) -> Bool {
        guard let restoredFrom, restoredFrom.at == version else { return false }
        return restoredFrom.source < source
    }

    /// The second phase of a transfer: where playback goes back to unless the new holder confirms
    /// it started by `confirmBy`.
    public struct PendingTransfer: Codable, Sendable, Equatable {
        /// The device that held the lease before the transfer; nil when none did.
        public var source: String?
        /// Server time (ms) by which the new holder must report that it plays.
        public var confirmBy: Int64

        public init(source: String?, confirmBy: Int64) {
            self.source = source
            self.confirmBy = confirmBy
        }

        enum CodingKeys: String, CodingKey {
            case source
            case confirmBy = "confirm_by"
        }
    }

    public init() {}

    /// The state of a user who never played.
    public static let initial = Playback()

    /// The position at server time `now`, never outside `[0, duration]`.
    public func position(at now: Int64) -> Int64 {
        PositionMath.position(
            positionMs: positionMs, positionAt: positionAt, isPlaying: isPlaying,
            durationMs: current?.track.durationMs, now: now)
    }

    /// This playback after its holder was lost with the daemon that served it (a restart, the state
    /// gone from Redis with no daemon left that saw it since): paused where it was at `lostAt` (the
    /// last moment a daemon recorded it), nobody holding it, and the play in progress counted up to
    /// then and no further. The rule of a lease's expiry: time runs only while a device is there.
    public func pausedAtLoss(lostAt: Int64, now: Int64) -> Playback {
        guard isPlaying || activeDevice != nil || pendingTransfer != nil else { return self }
        var paused = self
        if isPlaying, let track = current?.track {
            let moment = min(now, max(lostAt, positionAt))
            if var heard = listening {
                let wouldEnd = positionAt + max(0, track.durationMs - positionMs)
                heard.playedMs += max(0, min(moment, wouldEnd) - max(heard.countedUntil, positionAt))
                heard.countedUntil = now
                paused.listening = heard
            }
            paused.positionMs = position(at: moment)
            paused.positionAt = now
            paused.isPlaying = false
        }
        paused.activeDevice = nil
        paused.pendingTransfer = nil
        return paused
    }

    /// Upcoming context entry ids: the rest of the play order after the cursor, without wrap-around.
    var upcomingContextEntries: ArraySlice<String> {
        playOrder[min(cursor + 1, playOrder.count)...]
    }

    /// All upcoming entries: user-queued ones first, then the rest of the context.
    public var upcoming: [QueueEntry] {
        var entries = userQueue
        entries.reserveCapacity(userQueue.count + upcomingContextEntries.count)
        for id in upcomingContextEntries {
            if let track = contextTracks[id] {
                entries.append(QueueEntry(entry: id, source: .context, track: track))
            }
        }
        return entries
    }

    /// A device's volume: the state's for the active device, else the one it last had.
    public func volume(of device: String) -> Int? {
        device == activeDevice ? volume : deviceVolumes?[device]
    }

    /// The wire view; `includeQueue: false` leaves `queue` out, as `state` events do when it did not change.
    public func playerState(includeQueue: Bool = true) -> PlayerState {
        PlayerState(
            epoch: epoch, version: version, activeDevice: activeDevice, track: current?.track,
            isPlaying: isPlaying, positionMs: positionMs, positionAt: positionAt, volume: volume,
            repeat: repeatMode, shuffle: shuffle, context: context,
            queue: includeQueue ? upcoming : nil)
    }

    enum CodingKeys: String, CodingKey {
        case epoch, version, current, volume, shuffle, context, cursor, listening
        case activeDevice = "active_device"
        case isPlaying = "is_playing"
        case positionMs = "position_ms"
        case positionAt = "position_at"
        case repeatMode = "repeat"
        case contextTracks = "context_tracks"
        case contextOrder = "context_order"
        case playOrder = "play_order"
        case userQueue = "user_queue"
        case nextEntry = "next_entry"
        case deviceVolumes = "device_volumes"
        case pendingTransfer = "pending_transfer"
        case restoredFrom = "restored_from"
    }
}
