import Foundation
import Testing

/// Every task the daemon starts has an owner: a service of its `ServiceGroup`, a task group, or
/// the engine's `perform` (a child of its `run()`). An unstructured `Task { }` outlives shutdown
/// and escapes cancellation, so none may appear in the server's sources.
@Suite("task ownership")
struct TaskOwnershipTests {
    static let serverTargets = ["SyncServer", "PlaybackEngine", "RedisClient", "PlaybackStore", "playback-syncd"]

    @Test func theServerStartsNoUnstructuredTask() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
        let pattern = try Regex(#"(^|[^A-Za-z_.])Task(\.detached)?\s*(\{|\()|completeWithTask"#)
        var found: [String] = []
        for target in Self.serverTargets {
            let directory = sources.appendingPathComponent(target)
            guard let files = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil) else { continue }
            for case let file as URL in files where file.pathExtension == "swift" {
                let lines = try String(contentsOf: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
                for (number, line) in lines.enumerated() where line.contains(pattern) {
                    found.append("\(target)/\(file.lastPathComponent):\(number + 1): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(found.isEmpty, "unowned tasks:\n\(found.joined(separator: "\n"))")
        #expect(FileManager.default.fileExists(atPath: sources.appendingPathComponent("PlaybackEngine").path), "the sources were found")
    }
}
