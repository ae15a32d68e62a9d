import NIOCore
import Synchronization

/// The heartbeat of every session on one event loop, from one timer: each session has a slot,
/// and every `interval / slots` the sessions of the next slot get their tick (ping, or a drop
/// when silent for two heartbeats). At 19,000 idle connections a repeated task per session made
/// NIO's timer heap the largest idle cost; this is one timer per loop, and pings stay spread.
final class HeartbeatSweep {
    static let slots = 16

    private let eventLoop: any EventLoop
    private let interval: TimeAmount
    private var sessions: [[ObjectIdentifier: SessionHandler]] = Array(repeating: [:], count: slots)
    private var count = 0
    private var current = 0
    private var timer: RepeatedTask?

    private init(eventLoop: any EventLoop, interval: TimeAmount) {
        self.eventLoop = eventLoop
        self.interval = interval
    }

    /// Adds a session; its first tick comes one interval (give or take a slot) from now.
    func add(_ session: SessionHandler) {
        eventLoop.preconditionInEventLoop()
        // The slot just behind the one ticking next: a full interval until its turn.
        let slot = (current + Self.slots - 1) % Self.slots
        sessions[slot][ObjectIdentifier(session)] = session
        count += 1
        if timer == nil {
            let step = TimeAmount.nanoseconds(max(interval.nanoseconds / Int64(Self.slots), 1_000_000))
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            timer = eventLoop.scheduleRepeatedTask(initialDelay: step, delay: step) { _ in bound.value.tick() }
        }
    }

    func remove(_ session: SessionHandler) {
        eventLoop.preconditionInEventLoop()
        for slot in sessions.indices where sessions[slot].removeValue(forKey: ObjectIdentifier(session)) != nil {
            count -= 1
            break
        }
        if count == 0 {
            timer?.cancel()
            timer = nil
        }
    }

    private func tick() {
        let due = sessions[current]
        current = (current + 1) % Self.slots
        for session in due.values { session.heartbeatTick() }
    }

    /// The sweeps of one server, one per event loop (sessions of a loop are only touched on it).
    final class Registry: Sendable {
        private let interval: TimeAmount
        private let sweeps = Mutex<[ObjectIdentifier: NIOLoopBound<HeartbeatSweep>]>([:])

        init(intervalMs: Int64) {
            self.interval = .milliseconds(intervalMs)
        }

        /// The sweep of `eventLoop`; call on that loop.
        func sweep(on eventLoop: any EventLoop) -> HeartbeatSweep {
            let key = ObjectIdentifier(eventLoop)
            let interval = self.interval
            return sweeps.withLock { sweeps in
                if let sweep = sweeps[key] { return sweep }
                let sweep = NIOLoopBound(HeartbeatSweep(eventLoop: eventLoop, interval: interval), eventLoop: eventLoop)
                sweeps[key] = sweep
                return sweep
            }.value
        }
    }
}
