/// The pure reducer: applies one input to a user's playback and says what changed.
///
/// No IO and no clock: time, the sender, the devices and a shuffle seed come in through
/// `ReducerEnvironment`. A rejected input throws and changes nothing; an accepted one that
/// changes something raises `version` by exactly one, and `epoch` by one when the active device changes.
public struct PlaybackReducer: Sendable {
    public var catalog: any TrackCatalog
    public var limits: PlaybackLimits

    public init(catalog: any TrackCatalog, limits: PlaybackLimits = PlaybackLimits()) {
        self.catalog = catalog
        self.limits = limits
    }

    public func apply(
        _ input: Input, to state: Playback, environment: ReducerEnvironment, ifVersion: Int64? = nil
    ) throws(PlaybackError) -> Transition {
        if let ifVersion, ifVersion != state.version {
            throw .versionConflict(current: state.version)
        }
        var step = ReducerStep(state: state, env: environment, catalog: catalog, limits: limits)
        switch input {
        case .command(let command): try step.run(command)
        case .report(let epoch, let position, let isPlaying, let trackID):
            try step.report(epoch: epoch, positionMs: position, isPlaying: isPlaying, trackID: trackID)
        case .trackEnded(let epoch, let trackID): try step.trackEnded(epoch: epoch, trackID: trackID)
        case .release: try step.release()
        case .expire(let device, let lostAt): step.expire(device: device, lostAt: lostAt)
        case .confirmDeadline(let epoch): step.confirmDeadline(epoch: epoch)
        }
        return step.finish(from: state)
    }
}

/// One application of the reducer: the state being changed plus what it needs to know.
struct ReducerStep {
    var state: Playback
    let env: ReducerEnvironment
    let catalog: any TrackCatalog
    let limits: PlaybackLimits
    var lease: LeaseChange?
    var entry: String?
    /// Set when the current track reached its natural end: the play in progress is finished.
    var naturalEnd = false
    /// Set when a transfer is undone: its target never started, so its play is not recorded.
    var transferUndone = false

    init(state: Playback, env: ReducerEnvironment, catalog: any TrackCatalog, limits: PlaybackLimits) {
        self.state = state
        self.env = env
        self.catalog = catalog
        self.limits = limits
    }

    var now: Int64 { env.now }

    func finish(from old: Playback) -> Transition {
        var new = state
        let changed = new != old
        guard changed else {
            return Transition(playback: old, changed: false, queueChanged: false, lease: lease, entry: entry)
        }
        new.version = old.version + 1
        let finished = account(from: old, into: &new)
        let queueChanged =
            new.userQueue.map(\.entry) != old.userQueue.map(\.entry)
            || new.upcomingContextEntries != old.upcomingContextEntries
        return Transition(
            playback: new, changed: true, queueChanged: queueChanged, lease: lease, entry: entry, finishedPlays: finished)
    }

    /// Play-history bookkeeping: adds the time heard since the last change to the play in
    /// progress, ends it when the entry or the device changed (or the track finished), and starts
    /// the next one. Only called for inputs that change something, so it never makes a change by itself.
    func account(from old: Playback, into new: inout Playback) -> [PlayRecord] {
        var listening = old.listening
        if var heard = listening, old.isPlaying, let track = old.current?.track {
            let wouldEnd = old.positionAt + max(0, track.durationMs - old.positionMs)
            heard.playedMs += max(0, min(now, wouldEnd) - max(heard.countedUntil, old.positionAt))
            heard.countedUntil = now
            listening = heard
        } else if listening != nil {
            listening?.countedUntil = now
        }
        var finished: [PlayRecord] = []
        if transferUndone { listening = nil }
        if let heard = listening,
            naturalEnd || heard.entry != new.current?.entry || heard.device != new.activeDevice
        {
            let reason: PlayEndReason =
                if naturalEnd { .finished }
                else if heard.entry != new.current?.entry { .skipped }
                else if new.activeDevice != nil { .transferred }
                else { .stopped }
            if heard.playedMs > 0 {
                let context = old.current?.source == .context ? old.context : nil
                finished.append(PlayRecord(
                    trackID: heard.trackID, playedAt: heard.startedAt, endedAt: now, msPlayed: heard.playedMs,
                    context: context, device: heard.device, reason: reason))
            }
            listening = nil
        }
        if listening == nil, let current = new.current, new.activeDevice != nil || new.isPlaying {
            listening = Listening(
                entry: current.entry, trackID: current.track.id, device: new.activeDevice, startedAt: now, playedMs: 0,
                countedUntil: now)
        }
        new.listening = listening
        return finished
    }
}
