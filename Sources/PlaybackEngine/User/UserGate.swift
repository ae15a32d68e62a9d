import DequeModule
import NIOCore

/// Runs one user's work one job at a time, in arrival order, without a task per job. It lives on
/// the user's event loop and is touched there only: no locks.
///
/// A job is started with a `done` callback and may finish later (when its Redis reply comes);
/// the next job then starts on the loop. Jobs that finish at once run in a loop rather than
/// recursively, so a burst of them never deepens the stack. Async work takes its turn with
/// `run`, which holds the gate across its awaits (an actor alone would interleave).
final class UserGate {
    typealias Job = (_ done: @escaping @Sendable () -> Void) -> Void

    private let loop: any EventLoop
    private var busy = false
    private var jobs = Deque<Job>()
    /// The running job's number: a second `done` of it, or a late one, does nothing.
    private var current: UInt64 = 0
    private var finished = true
    /// The running job was started and has not returned yet.
    private var starting = false

    init(loop: any EventLoop) {
        self.loop = loop
    }

    /// Nothing running or waiting.
    var isIdle: Bool { !busy && jobs.isEmpty }

    /// Starts `job` now when the gate is free, else after the jobs before it.
    func enqueue(_ job: @escaping Job) {
        loop.preconditionInEventLoop()
        jobs.append(job)
        guard !busy else { return }
        busy = true
        drain()
    }

    /// Runs `body` when it is this caller's turn; the next job waits until it returns.
    nonisolated(nonsending) func run<T>(_ body: () async throws -> T) async rethrows -> T {
        let done = await withCheckedContinuation { (turn: CheckedContinuation<@Sendable () -> Void, Never>) in
            enqueue { done in turn.resume(returning: done) }
        }
        defer { done() }
        return try await body()
    }

    private func drain() {
        while let job = jobs.popFirst() {
            current &+= 1
            finished = false
            starting = true
            job(doneCallback(for: current))
            starting = false
            // Finished while starting: take the next one here. Otherwise `done` takes it later.
            guard finished else { return }
        }
        busy = false
    }

    private func doneCallback(for job: UInt64) -> @Sendable () -> Void {
        let gate = NIOLoopBound(self, eventLoop: loop)
        let loop = self.loop
        return {
            if loop.inEventLoop {
                gate.value.finish(job)
            } else {
                loop.execute { gate.value.finish(job) }
            }
        }
    }

    private func finish(_ job: UInt64) {
        guard job == current, !finished else { return }
        finished = true
        if !starting { drain() }
    }
}
