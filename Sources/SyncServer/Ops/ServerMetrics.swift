import Metrics
import PlaybackEngine
import Synchronization

/// The daemon's metrics, named once here. They go to the process's `MetricsSystem`
/// (Prometheus in `playback-syncd`, rendered at `/metrics`); labels stay low-cardinality.
enum ServerMetrics {
    static let connections = Meter(label: "playback_ws_connections")
    static let upgrades = Counter(label: "playback_ws_upgrades_total")
    static let sessions = Meter(label: "playback_sessions")
    static let commandDuration = Metrics.Timer(label: "playback_command_duration_seconds")
    /// Ping → pong per connection (each heartbeat): how far the devices are, network and client included.
    static let roundTrip = Metrics.Timer(label: "playback_ws_round_trip_seconds")
    /// Connections closed because their TLS handshake and request head took longer than the request timeout.
    static let requestTimeouts = Counter(label: "playback_http_request_timeouts_total")

    static func closed(_ code: UInt16) {
        counter("playback_ws_closes_total", [("code", String(code))]).increment()
    }

    /// A close the handshake sends (ours, or the peer's echoed; 1005 when it had no code).
    static func closing(_ step: CloseHandshake.Step) {
        if let code = step.code { closed(code) }
    }

    static func message(_ type: String, result: String) {
        counter("playback_messages_total", [("type", type), ("result", result)]).increment()
    }

    static func command(_ op: String, result: String) {
        counter("playback_commands_total", [("op", op), ("result", result)]).increment()
    }

    static func rejectedUpgrade(_ reason: String) {
        counter("playback_ws_rejected_upgrades_total", [("reason", reason)]).increment()
    }

    /// Counters by label and dimensions, made once: building a swift-metrics Counter goes through
    /// the factory (a lock and a lookup in Prometheus) on every message otherwise. The label values
    /// are bounded (message types, ops, error codes, close codes), so the cache is too.
    private static let counters = Mutex<[CounterKey: Counter]>([:])

    private struct CounterKey: Hashable {
        var label: String
        var dimensions: [String]
    }

    private static func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        let key = CounterKey(label: label, dimensions: dimensions.flatMap { [$0.0, $0.1] })
        return counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(label: label, dimensions: dimensions)
            counters[key] = counter
            return counter
        }
    }
}

extension Metrics.Timer {
    func record(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
