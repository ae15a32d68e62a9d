/// The commands a device or a REST client sends.
extension ReducerStep {
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
}
