import NIOCore
import PlaybackEngine
import Synchronization

/// The engine's handle on a session: hops onto the connection's event loop.
final class SessionSink: DeviceSink {
    let sessionID: String
    private let handler: NIOLoopBound<SessionHandler>
    private let eventLoop: any EventLoop
    /// The last ping → pong round trip in ms; -1 before the first.
    private let lastRoundTrip = Atomic<Int>(-1)

    var roundTripMs: Int? {
        let value = lastRoundTrip.load(ordering: .relaxed)
        return value < 0 ? nil : value
    }

    func recordRoundTrip(nanoseconds: UInt64) {
        lastRoundTrip.store(Int(clamping: (nanoseconds + 500_000) / 1_000_000), ordering: .relaxed)
    }

    init(sessionID: String, handler: NIOLoopBound<SessionHandler>, eventLoop: any EventLoop) {
        self.sessionID = sessionID
        self.handler = handler
        self.eventLoop = eventLoop
    }

    /// Always through the loop's queue, even from the loop itself: messages for one connection come
    /// from several threads (the bus, a welcome, a regrant), and writing one at once could overtake
    /// one queued before it (a version 4 after a version 6).
    func send(_ message: EncodedMessage) {
        let handler = self.handler
        eventLoop.execute { handler.value.deliver(message) }
    }

    func close(_ code: CloseCode, reason: String) {
        let handler = self.handler
        eventLoop.execute { handler.value.close(code, reason) }
    }
}
