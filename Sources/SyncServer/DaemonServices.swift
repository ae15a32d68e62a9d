import Logging
import PlaybackEngine
import ServiceLifecycle

/// The engine as a service: `run()` until the group shuts down gracefully, then the engine
/// finishes its jobs and writes what it must. Put it before the HTTP server in the group, so that
/// the server (and its sessions) stop first.
public struct EngineService: Service {
    let engine: any PlaybackEngine

    public init(_ engine: any PlaybackEngine) {
        self.engine = engine
    }

    public func run() async throws {
        let engine = self.engine
        await withGracefulShutdownHandler {
            await engine.run()
        } onGracefulShutdown: {
            engine.beginShutdown()
        }
    }
}

/// A loop that runs until graceful shutdown (then it is cancelled), followed by `finish`:
/// the write-behind queue (then flushed), the catalog refresh.
public struct LoopService: Service, CustomStringConvertible {
    public let description: String
    let loop: @Sendable () async -> Void
    let finish: @Sendable () async -> Void

    public init(_ name: String, loop: @escaping @Sendable () async -> Void, finish: @escaping @Sendable () async -> Void = {}) {
        self.description = name
        self.loop = loop
        self.finish = finish
    }

    public func run() async throws {
        let loop = self.loop
        await cancelWhenGracefulShutdown { await loop() }
        await finish()
    }
}
