/// What the active device reports and what the server itself decides (expiry, the confirmation deadline).
extension ReducerStep {
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
}
