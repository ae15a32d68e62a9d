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

    /// Registers every metric the README lists, at zero, so that `/metrics` shows each from the
    /// start (a dashboard or an alert on a counter that has not happened yet still finds it).
    /// Labelled ones start with a label set they take; `withStore`: the PostgreSQL writer's too.
    static func registerAtStart(withStore: Bool) {
        for (label, dimensions) in [
            ("playback_ws_rejected_upgrades_total", [("reason", "token")]),
            ("playback_auth_refusals_total", [("reason", "expired")]),
            ("playback_messages_total", [("type", "command"), ("result", "ok")]),
            ("playback_commands_total", [("op", "play"), ("result", "ok")]),
            ("playback_ws_closes_total", [("code", "1000")]),
            ("playback_lease_changes_total", [("reason", "transferred")]),
            ("playback_restores_total", [("from", "snapshot")]),
        ] as [(String, [(String, String)])] {
            counter(label, dimensions).increment(by: 0)
        }
        for label in [
            "playback_commit_conflicts_total", "playback_lease_sweeps_total", "playback_request_ids_full_total",
            "playback_work_dropped_total", "playback_commands_shed_total", "playback_commands_contended_total",
            "playback_command_turn_waits_total", "playback_storage_regressions_total", "playback_lease_index_failures_total",
            "playback_plays_recorded_total", "playback_idle_expiries_total",
        ] {
            Counter(label: label).increment(by: 0)
        }
        upgrades.increment(by: 0)
        connections.set(0)
        sessions.set(0)
        Gauge(label: "playback_bus_lag_seconds").record(0)
        // Timers are made, not recorded: a zero would be a measurement.
        _ = Metrics.Timer(label: "playback_report_drift_seconds")
        _ = [commandDuration, roundTrip]
        guard withStore else { return }
        for kind in ["snapshot", "play", "device"] { Gauge(label: "playback_store_pending", dimensions: [("kind", kind)]).record(0) }
        Gauge(label: "playback_store_up").record(1)
        for kind in ["snapshot", "play"] {
            Counter(label: "playback_store_written_total", dimensions: [("kind", kind)]).increment(by: 0)
            Counter(label: "playback_store_dropped_total", dimensions: [("kind", kind)]).increment(by: 0)
            Counter(label: "playback_store_rejected_total", dimensions: [("kind", kind)]).increment(by: 0)
        }
        Counter(label: "playback_store_write_failures_total", dimensions: [("code", "unavailable")]).increment(by: 0)
    }

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
