import ArgumentParser
import Foundation
import Logging
import SyncServer

/// `playback-syncd`: runs the server (`serve`, the default) until SIGTERM/SIGINT (sessions are
/// closed with 1001), or manages its PostgreSQL database (`migrate`, `seed-catalog`).
@main
struct PlaybackSyncd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "playback-syncd",
        abstract: "Real-time playback sync daemon: one active device per user, every change on every device.",
        discussion: """
            `serve` is the default: `playback-syncd --port 9000` serves. Its options (port, engine, Redis, PostgreSQL, \
            tokens, limits, logs): `playback-syncd serve --help`. Every option can also be set with the environment \
            variable shown in its help; the flag wins.
            """,
        version: "0.3.0",
        subcommands: [Serve.self, Migrate.self, SeedCatalog.self],
        defaultSubcommand: Serve.self)
}

/// Reads a flag, else an environment variable (empty counts as unset).
func setting(_ flag: String?, _ name: String) -> String? {
    flag ?? ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
}

func number<T: LosslessStringConvertible>(_ flag: T?, _ name: String) throws -> T? {
    if let flag { return flag }
    guard let text = setting(nil, name) else { return nil }
    guard let value = T(text) else { throw ValidationError("\(name)=\(text) is not a valid number") }
    return value
}

func bootstrapLogging(_ requested: String?, format requestedFormat: String? = nil) throws {
    let level = setting(requested, "PLAYBACK_LOG_LEVEL").map { Logger.Level(rawValue: $0.lowercased()) } ?? .info
    guard let level else { throw ValidationError("unknown log level") }
    let format = setting(requestedFormat, "PLAYBACK_LOG_FORMAT")?.lowercased() ?? "text"
    guard format == "text" || format == "json" else { throw ValidationError("unknown log format \(format) (text or json)") }
    LoggingSystem.bootstrap { label in
        if format == "json" {
            var handler = JSONLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}
