import Synchronization

/// How far behind a pub/sub connection is: the time a `PING` sent on it takes to come back. In
/// the subscribed state Redis answers it in order with the messages, so the round trip is the
/// backlog of messages queued for this connection (in Redis's output buffer, the network, and the
/// reader). A probe still unanswered counts with its age: a connection that stopped being read
/// shows a lag that grows.
public final class SubscriptionLag: Sendable {
    private struct State {
        /// The last answered probe's round trip, ms.
        var lastMs: Int64 = 0
        /// When the probe in flight was sent (ns), if one is.
        var sentNs: UInt64?
    }

    private let state = Mutex(State())

    public init() {}

    /// The lag now, ms: the last round trip, or the age of the probe in flight when that is longer.
    public func ms(nowNs: UInt64) -> Int64 {
        state.withLock { state in
            let waiting = state.sentNs.map { Int64((nowNs &- $0) / 1_000_000) } ?? 0
            return max(state.lastMs, waiting)
        }
    }

    func sent(atNs ns: UInt64) { state.withLock { $0.sentNs = ns } }

    func answered(atNs ns: UInt64) {
        state.withLock { state in
            if let sent = state.sentNs { state.lastMs = Int64((ns &- sent) / 1_000_000) }
            state.sentNs = nil
        }
    }

    /// No connection: nothing is queued for it (what is missed is recovered on resubscription).
    func reset() { state.withLock { $0 = State() } }
}
