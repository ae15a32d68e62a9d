import Logging
import Synchronization

/// Keeps what one test server logs, so that a test can assert on what happened to its own
/// connections (a close code, a drift measured) without reading a process-wide metric that the
/// tests running beside it move too.
final class LogRecorder: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])
    /// Entries at this level or above are printed as well as recorded (TEST_LOG_LEVEL).
    let printedLevel: Logger.Level

    init(printing level: Logger.Level) { printedLevel = level }

    var handler: any LogHandler { Handler(recorder: self) }

    /// The entries with this message whose metadata has every given key and value.
    func entries(_ message: String, where metadata: [String: String] = [:]) -> [Entry] {
        entries.withLock { entries in
            entries.filter { entry in entry.message == message && metadata.allSatisfy { entry.metadata[$0.key] == $0.value } }
        }
    }

    fileprivate func record(_ entry: Entry) { entries.withLock { $0.append(entry) } }

    private struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged: [String: String] = [:]
            for (key, value) in metadata { merged[key] = "\(value)" }
            for (key, value) in event.metadata ?? [:] { merged[key] = "\(value)" }
            recorder.record(Entry(level: event.level, message: "\(event.message)", metadata: merged))
            if event.level >= recorder.printedLevel { print("\(event.level) \(event.message) \(merged)") }
        }
    }
}
