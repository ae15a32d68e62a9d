import Synchronization

/// How far behind a pub/sub connection is: the time a `PING` sent on it takes to come back. In
/// the subscribed state Redis answers it in order with the messages, so the round trip is the
/// backlog of messages queued for this connection (in Redis's output buffer, the network, and the
/// reader). A probe still unanswered counts with its age: a connection that stopped being read
/// shows a lag that grows.
///
/// Read by every command (a node sheds commands while its bus lags), so it is two atomics, not a lock.
public final class SubscriptionLag: Sendable {
    /// The last answered probe's round trip, ms.
    private let lastMs = Atomic<Int64>(0)
    /// When the probe in flight was sent (ns), 0 when none is.
    private let sentNs = Atomic<UInt64>(0)

    public init() {}

    /// The lag now, ms: the last round trip, or the age of the probe in flight when that is longer.
    public func ms(nowNs: UInt64) -> Int64 {
        let sent = sentNs.load(ordering: .relaxed)
        let waiting = sent == 0 ? 0 : Int64((nowNs &- sent) / 1_000_000)
        return max(lastMs.load(ordering: .relaxed), waiting)
    }

    func sent(atNs ns: UInt64) { sentNs.store(max(ns, 1), ordering: .relaxed) }

    func answered(atNs ns: UInt64) {
        let sent = sentNs.exchange(0, ordering: .relaxed)
        if sent != 0 { lastMs.store(Int64((ns &- sent) / 1_000_000), ordering: .relaxed) }
    }

    /// No connection: nothing is queued for it (what is missed is recovered on resubscription).
    func reset() {
        sentNs.store(0, ordering: .relaxed)
        lastMs.store(0, ordering: .relaxed)
    }
}
