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
        var step = Step(state: state, env: environment, catalog: catalog, limits: limits)
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
private struct Step {
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

    // MARK: Commands

    mutating func run(_ command: Command) throws(PlaybackError) {
        switch command {
        case .play(let args): try play(args)
        case .pause: pause()
        case .resume: try resume()
        case .next:
            guard state.current != nil || !state.userQueue.isEmpty else { throw nothingLoaded }
            advance(natural: false)
        case .previous: try previous()
        case .seek(let position): try seek(position)
        case .volume(let percent, let device): try setVolume(percent, device: device)
        case .setRepeat(let mode): state.repeatMode = mode
        case .setShuffle(let on): setShuffle(on)
        case .queueAdd(let trackID, let at): try queueAdd(trackID: trackID, at: at)
        case .queueRemove(let entry): try queueRemove(entry)
        case .queueMove(let entry, let to): try queueMove(entry, to: to)
        case .queueClear: state.userQueue.removeAll()
        case .transfer(let device, let play): try transfer(to: device, play: play)
        }
    }

    var nothingLoaded: PlaybackError { .badRequest("nothing is loaded: play a track, a list or a context first") }

    mutating func play(_ args: Command.Play) throws(PlaybackError) {
        let target = try playbackTarget(named: args.device)
        if args.loadsSomething {
            let startPosition = try load(args)
            state.isPlaying = true
            state.positionMs = startPosition
            state.positionAt = now
        } else {
            guard let current = state.current else {
                throw .badRequest("nothing to play: give track_id, track_ids or context")
            }
            if let position = args.positionMs {
                state.positionMs = try startPosition(position, in: current.track)
                state.positionAt = now
            }
            setPlaying(true)
        }
        moveLease(to: target, reason: .takenOver)
    }

    mutating func pause() {
        guard state.current != nil else { return }
        setPlaying(false)
    }

    mutating func resume() throws(PlaybackError) {
        guard state.current != nil else { throw nothingLoaded }
        if state.isPlaying, state.activeDevice != nil { return }
        let target = try playbackTarget(named: nil)
        setPlaying(true)
        moveLease(to: target, reason: .takenOver)
    }

    mutating func seek(_ requested: Int64) throws(PlaybackError) {
        guard let current = state.current else { throw nothingLoaded }
        let position = max(requested, 0)
        if position >= current.track.durationMs {
            advance(natural: false)
        } else {
            setPosition(position)
        }
    }

    mutating func previous() throws(PlaybackError) {
        guard let current = state.current else { throw nothingLoaded }
        if state.position(at: now) > 3_000 {
            setPosition(0)
            return
        }
        switch current.source {
        case .context where state.cursor > 0:
            state.cursor -= 1
            playContextEntry(at: state.cursor)
        case .queue where state.cursor >= 0:
            playContextEntry(at: state.cursor)
        default:
            setPosition(0)
        }
    }

    mutating func setShuffle(_ on: Bool) {
        guard on != state.shuffle else { return }
        state.shuffle = on
        guard !state.contextOrder.isEmpty else { return }
        let anchor = state.cursor >= 0 && state.cursor < state.playOrder.count ? state.playOrder[state.cursor] : nil
        if on {
            state.playOrder = shuffledOrder(state.contextOrder, keepingFirst: anchor)
            state.cursor = anchor == nil ? -1 : 0
        } else {
            state.playOrder = state.contextOrder
            state.cursor = anchor.flatMap { state.contextOrder.firstIndex(of: $0) } ?? -1
        }
    }

    mutating func queueAdd(trackID: String, at placement: Command.QueuePlacement) throws(PlaybackError) {
        let track = try playableTrack(trackID)
        guard state.userQueue.count < limits.queueCapacity else {
            throw PlaybackError(.queueFull, "the queue holds at most \(limits.queueCapacity) entries")
        }
        let id = mintEntry()
        let queued = QueueEntry(entry: id, source: .queue, track: track)
        switch placement {
        case .next: state.userQueue.insert(queued, at: 0)
        case .end: state.userQueue.append(queued)
        }
        entry = id
    }

    mutating func queueRemove(_ id: String) throws(PlaybackError) {
        if let index = state.userQueue.firstIndex(where: { $0.entry == id }) {
            state.userQueue.remove(at: index)
        } else if let index = state.upcomingContextEntries.firstIndex(of: id) {
            state.playOrder.remove(at: index)
            state.contextOrder.removeAll { $0 == id }
            state.contextTracks[id] = nil
        } else {
            throw .entryNotFound(id)
        }
    }

    mutating func queueMove(_ id: String, to requested: Int) throws(PlaybackError) {
        guard let index = state.userQueue.firstIndex(where: { $0.entry == id }) else { throw .entryNotFound(id) }
        let moved = state.userQueue.remove(at: index)
        let destination = min(max(requested, 0), state.userQueue.count)
        state.userQueue.insert(moved, at: destination)
    }

    mutating func transfer(to device: String, play: Bool?) throws(PlaybackError) {
        try requireOnline(device)
        guard device != state.activeDevice else { return }
        if state.current != nil {
            freezePosition()
            state.isPlaying = play ?? state.isPlaying
        }
        let source = state.activeDevice
        moveLease(to: device, reason: .transferred)
        // Two-phase: a device that confirms its start gets a deadline for it; playback goes back
        // to `source` without the confirmation (`confirmDeadline`).
        if env.confirmingDevices.contains(device), state.current != nil, state.isPlaying {
            let pending = Playback.PendingTransfer(source: source, confirmBy: now + limits.transferConfirmMs)
            state.pendingTransfer = pending
            lease?.confirmBy = pending.confirmBy
        }
    }

    // MARK: Signals from the active device and the server

    mutating func report(epoch: Int64, positionMs: Int64, isPlaying: Bool, trackID: String) throws(PlaybackError) {
        try requireLease(epoch: epoch)
        // A holder that reports playing at its epoch confirms the start of a transfer.
        if isPlaying { state.pendingTransfer = nil }
        guard let current = state.current, current.track.id == trackID else {
            throw .badRequest("the report names track \(trackID) but the current track is \(state.current?.track.id ?? "none")")
        }
        let reported = PositionMath.clamp(positionMs, durationMs: current.track.durationMs)
        let expected = state.position(at: now)
        guard isPlaying != state.isPlaying || abs(reported - expected) > 1_000 else { return }
        state.positionMs = reported
        state.positionAt = now
        state.isPlaying = isPlaying
    }

    mutating func trackEnded(epoch: Int64, trackID: String) throws(PlaybackError) {
        try requireLease(epoch: epoch)
        guard state.current?.track.id == trackID else { return }
        state.pendingTransfer = nil
        naturalEnd = true
        advance(natural: true)
    }

    mutating func release() throws(PlaybackError) {
        guard let sender = env.sender, sender == state.activeDevice else { throw .staleEpoch(current: state.epoch) }
        // A transfer's target that lets go before it confirmed did not start.
        if state.pendingTransfer != nil { return goBack() }
        endLease(reason: .released)
    }

    mutating func expire(device: String, lostAt: Int64?) {
        guard device == state.activeDevice else { return }
        // A transfer's target lost before it confirmed never played: nothing to freeze.
        if state.pendingTransfer != nil { return goBack() }
        if let lostAt, state.isPlaying, state.current != nil {
            // Frozen where it was at the moment of loss, or at the last change made after it.
            let moment = min(now, max(lostAt, state.positionAt))
            state.positionMs = state.position(at: moment)
            state.positionAt = now
            state.isPlaying = false
        }
        endLease(reason: .expired)
    }

    /// Past the confirmation deadline of the transfer at `epoch`, unconfirmed: playback goes back.
    mutating func confirmDeadline(epoch: Int64) {
        guard let pending = state.pendingTransfer, epoch == state.epoch, now >= pending.confirmBy else { return }
        goBack()
    }

    /// Undoes a transfer whose target did not start: the lease goes back to the device it came
    /// from if that one is online, else nobody holds it and playback pauses. The position is where
    /// the transfer (or a later change) left it, since nothing played meanwhile; the play state is
    /// the user's.
    mutating func goBack() {
        guard let pending = state.pendingTransfer else { return }
        state.pendingTransfer = nil
        transferUndone = true
        if state.current != nil { state.positionAt = now }
        if let source = pending.source, env.devices[source] == .online {
            moveLease(to: source, reason: .transferFailed)
        } else {
            state.isPlaying = false
            moveLease(to: nil, reason: .transferFailed)
        }
    }

    // MARK: Building blocks

    /// Moves to the next entry. At the natural end `repeat track` replays the track; with nothing
    /// next, `repeat context` wraps, otherwise playback stops at position 0 of the last track.
    mutating func advance(natural: Bool) {
        if natural, state.repeatMode == .track, state.current != nil {
            restartPosition()
        } else if !state.userQueue.isEmpty {
            let queued = state.userQueue.removeFirst()
            state.current = .init(entry: queued.entry, source: .queue, track: queued.track)
            restartPosition()
        } else if state.cursor + 1 < state.playOrder.count {
            state.cursor += 1
            playContextEntry(at: state.cursor)
        } else if state.repeatMode == .context, !state.playOrder.isEmpty {
            state.cursor = 0
            playContextEntry(at: 0)
        } else if state.current != nil {
            if state.isPlaying || state.positionMs != 0 {
                state.isPlaying = false
                state.positionMs = 0
                state.positionAt = now
            }
        }
    }

    mutating func playContextEntry(at index: Int) {
        let id = state.playOrder[index]
        guard let track = state.contextTracks[id] else { return }
        state.current = .init(entry: id, source: .context, track: track)
        restartPosition()
    }

    mutating func restartPosition() {
        state.positionMs = 0
        state.positionAt = now
    }

    /// Sets the position at `now`; a paused state at the same position is left untouched.
    mutating func setPosition(_ position: Int64) {
        guard state.isPlaying || position != state.positionMs else { return }
        state.positionMs = position
        state.positionAt = now
    }

    /// Re-anchors the extrapolated position at `now`.
    mutating func freezePosition() {
        state.positionMs = state.position(at: now)
        state.positionAt = now
    }

    mutating func setPlaying(_ playing: Bool) {
        guard playing != state.isPlaying else { return }
        freezePosition()
        state.isPlaying = playing
    }

    mutating func endLease(reason: LeaseReason) {
        if state.current != nil { setPlaying(false) }
        moveLease(to: nil, reason: reason)
    }

    /// The active device's volume (the state's), or a named device's own.
    mutating func setVolume(_ percent: Int, device: String?) throws(PlaybackError) {
        guard (0...100).contains(percent) else { throw .badRequest("volume percent must be an integer from 0 to 100") }
        if let device, device != state.activeDevice {
            guard env.devices[device] != nil else { throw PlaybackError(.deviceNotFound, "no device \(device)") }
            rememberVolume(percent, of: device)
            return
        }
        state.volume = percent
        if let active = state.activeDevice { rememberVolume(percent, of: active) }
    }

    /// Keeps a device's volume; devices the user no longer has are forgotten (bounded by the directory).
    mutating func rememberVolume(_ percent: Int, of device: String) {
        var volumes = state.deviceVolumes ?? [:]
        guard volumes[device] != percent else { return }
        volumes[device] = percent
        if !env.devices.isEmpty { volumes = volumes.filter { env.devices[$0.key] != nil || $0.key == device } }
        state.deviceVolumes = volumes
    }

    mutating func moveLease(to device: String?, reason: LeaseReason) {
        guard device != state.activeDevice else { return }
        let previous = state.activeDevice
        state.pendingTransfer = nil
        // Each device keeps its own volume: the new holder plays at the one it had (a device
        // never seen before starts at the one playing now).
        if let previous { rememberVolume(state.volume, of: previous) }
        if let device {
            state.volume = state.deviceVolumes?[device] ?? state.volume
            rememberVolume(state.volume, of: device)
        }
        state.epoch += 1
        state.activeDevice = device
        lease = LeaseChange(epoch: state.epoch, revoked: previous, granted: device, reason: reason)
    }

    /// The device playback starts on: the named one, else the active one, else the sender.
    func playbackTarget(named device: String?) throws(PlaybackError) -> String {
        if let device {
            try requireOnline(device)
            return device
        }
        if let active = state.activeDevice { return active }
        if let sender = env.sender { return sender }
        throw PlaybackError(.noActiveDevice, "no device is active: name one with device")
    }

    func requireOnline(_ device: String) throws(PlaybackError) {
        switch env.devices[device] {
        case .online?: return
        case .offline?: throw PlaybackError(.deviceOffline, "device \(device) is offline")
        case nil: throw PlaybackError(.deviceNotFound, "no device with id \(device)")
        }
    }

    func requireLease(epoch: Int64) throws(PlaybackError) {
        guard epoch == state.epoch, let sender = env.sender, sender == state.activeDevice else {
            throw .staleEpoch(current: state.epoch)
        }
    }

    func playableTrack(_ id: String) throws(PlaybackError) -> Track {
        guard let track = catalog.track(id: id) else { throw .trackNotFound(id) }
        guard catalog.isLicensed(trackID: id, country: env.country) else {
            throw PlaybackError(.unavailableInRegion, "track \(id) is not available in your region")
        }
        return track
    }

    func startPosition(_ requested: Int64, in track: Track) throws(PlaybackError) -> Int64 {
        let position = max(requested, 0)
        guard position < track.durationMs else {
            throw .badRequest("position_ms \(requested) is past the end of track \(track.id) (\(track.durationMs) ms)")
        }
        return position
    }

    /// `entries` in a random order (from the environment's seed), with `anchor` first when given.
    func shuffledOrder(_ entries: [String], keepingFirst anchor: String?) -> [String] {
        var rng = SplitMix64(seed: env.randomSeed)
        var rest = entries.filter { $0 != anchor }
        rest.shuffle(using: &rng)
        return (anchor.map { [$0] } ?? []) + rest
    }

    mutating func mintEntry() -> String {
        defer { state.nextEntry += 1 }
        return "e\(state.nextEntry)"
    }

    /// Loads the track, list or context of `play` and makes its start entry current; returns the start position.
    mutating func load(_ args: Command.Play) throws(PlaybackError) -> Int64 {
        let context: PlaybackContext?
        let tracks: [Track]
        switch (args.trackIDs, args.context) {
        case (.some, .some):
            throw .badRequest("give either track_ids or context, not both")
        case (.some(let ids), nil):
            guard !ids.isEmpty else { throw .badRequest("track_ids must not be empty") }
            guard ids.count <= limits.maxTracksPerPlay else {
                throw .badRequest("track_ids holds at most \(limits.maxTracksPerPlay) tracks")
            }
            var found: [Track] = []
            found.reserveCapacity(ids.count)
            for id in ids {
                guard let track = catalog.track(id: id) else { throw .trackNotFound(id) }
                found.append(track)
            }
            context = .list
            tracks = found
        case (nil, .some(let named)):
            guard let found = catalog.tracks(in: named) else {
                throw PlaybackError(.trackNotFound, "no context \(named)")
            }
            context = named
            tracks = found
        case (nil, nil):
            guard let id = args.trackID else { throw nothingLoaded }
            let track = try playableTrack(id)
            let position = try startPosition(args.positionMs ?? 0, in: track)
            state.context = nil
            state.contextTracks = [:]
            state.contextOrder = []
            state.playOrder = []
            state.cursor = -1
            state.current = .init(entry: mintEntry(), source: .context, track: track)
            return position
        }

        let startTrack: Track
        if let id = args.trackID {
            guard let track = tracks.first(where: { $0.id == id }) else {
                throw PlaybackError(.trackNotFound, "track \(id) is not in the context")
            }
            startTrack = try playableTrack(track.id)
        } else {
            guard let first = tracks.first(where: { catalog.isLicensed(trackID: $0.id, country: env.country) }) else {
                throw PlaybackError(.unavailableInRegion, "nothing in this context is available in your region")
            }
            startTrack = first
        }
        let position = try startPosition(args.positionMs ?? 0, in: startTrack)

        var byEntry: [String: Track] = [:]
        var order: [String] = []
        var start: String?
        for track in tracks where catalog.isLicensed(trackID: track.id, country: env.country) {
            let id = mintEntry()
            byEntry[id] = track
            order.append(id)
            if start == nil, track.id == startTrack.id { start = id }
        }
        guard let start else { throw PlaybackError(.internal, "start entry missing") }
        state.context = context
        state.contextTracks = byEntry
        state.contextOrder = order
        if state.shuffle {
            state.playOrder = shuffledOrder(order, keepingFirst: start)
            state.cursor = 0
        } else {
            state.playOrder = order
            state.cursor = order.firstIndex(of: start) ?? 0
        }
        state.current = .init(entry: start, source: .context, track: startTrack)
        return position
    }
}
