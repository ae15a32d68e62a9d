import DequeModule
import Synchronization

/// Runs one user's work one job at a time, in arrival order, without a task per job.
///
/// A job is started with a `done` callback and may finish later (when its Redis reply comes);
/// the next job starts on the thread that calls `done`. Jobs that finish at once run in a loop
/// rather than recursively, so a burst of them never deepens the stack. Async work takes its
/// turn with `run`, which holds the gate across its awaits (an actor alone would interleave).
final class UserGate: Sendable {
    typealias Job = @Sendable (_ done: @escaping @Sendable () -> Void) -> Void

    private struct State {
        var busy = false
        var jobs = Deque<Job>()
    }

    private let state = Mutex(State())

    /// Nothing running or waiting.
    var isIdle: Bool { state.withLock { !$0.busy && $0.jobs.isEmpty } }

    /// Starts `job` now when the gate is free, else after the jobs before it.
    func enqueue(_ job: @escaping Job) {
        let start = state.withLock { state -> Bool in
            state.jobs.append(job)
            guard !state.busy else { return false }
            state.busy = true
            return true
        }
        if start { drain() }
    }

    /// Runs `body` when it is this caller's turn; the next job waits until it returns.
    func run<T>(_ body: () async throws -> T) async rethrows -> T {
        let done = await withCheckedContinuation { (turn: CheckedContinuation<@Sendable () -> Void, Never>) in
            enqueue { done in turn.resume(returning: done) }
        }
        defer { done() }
        return try await body()
    }

    private func drain() {
        while let job = state.withLock({ state -> Job? in
            if let job = state.jobs.popFirst() { return job }
            state.busy = false
            return nil
        }) {
            let completion = Completion()
            job { [self] in if completion.finish() { drain() } }
            // Finished while starting: take the next one here. Otherwise `done` takes it later.
            guard completion.finishedInline() else { return }
        }
    }

    /// Whether a job called `done` while it was being started, or later.
    private final class Completion: Sendable {
        private enum Phase { case starting, finishedWhileStarting, started }
        private let phase = Mutex(Phase.starting)

        /// Called by `done`; true when the caller must start the next job.
        func finish() -> Bool {
            phase.withLock { phase in
                guard phase == .starting else { return true }
                phase = .finishedWhileStarting
                return false
            }
        }

        /// Called once the job's start returned; true when it already finished.
        func finishedInline() -> Bool {
            phase.withLock { phase in
                if phase == .finishedWhileStarting { return true }
                phase = .started
                return false
            }
        }
    }
}
