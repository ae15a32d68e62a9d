/// The steps the commands and signals are made of: moving through the queue, the position, the
/// lease, volumes, and the checks that refuse an input.
extension ReducerStep {
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
