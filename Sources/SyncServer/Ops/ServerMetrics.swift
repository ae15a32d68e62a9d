import Metrics
import PlaybackEngine

/// The daemon's metrics, named once here. They go to the process's `MetricsSystem`
/// (Prometheus in `playback-syncd`, rendered at `/metrics`); labels stay low-cardinality.
enum ServerMetrics {
    static let connections = Meter(label: "playback_ws_connections")
    static let upgrades = Counter(label: "playback_ws_upgrades_total")
    static let sessions = Meter(label: "playback_sessions")
    static let commandDuration = Metrics.Timer(label: "playback_command_duration_seconds")

    static func closed(_ code: UInt16) {
        Counter(label: "playback_ws_closes_total", dimensions: [("code", String(code))]).increment()
    }

    static func message(_ type: String, result: String) {
        Counter(label: "playback_messages_total", dimensions: [("type", type), ("result", result)]).increment()
    }

    static func command(_ op: String, result: String) {
        Counter(label: "playback_commands_total", dimensions: [("op", op), ("result", result)]).increment()
    }

    static func rejectedUpgrade(_ reason: String) {
        Counter(label: "playback_ws_rejected_upgrades_total", dimensions: [("reason", reason)]).increment()
    }
}

extension Metrics.Timer {
    func record(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
