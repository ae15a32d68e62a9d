import Synchronization

/// Work that synchronous code starts (a connection ended, a frame from the bus asks for a read, a
/// rare message needs an `await`) and that its owner must be able to finish: each job runs as a
/// child task of `run()`, which the engine runs for as long as it serves. `finish()` lets the jobs
/// in hand complete, then `run()` returns; a job submitted after that is dropped and counted.
public final class BackgroundWork: Sendable {
    public typealias Job = @Sendable () async -> Void

    private let jobs: AsyncStream<Job>
    private let submissions: AsyncStream<Job>.Continuation
    private let finishing = Atomic<Bool>(false)

    /// True once `finish()` was called: jobs that only wait should stop waiting.
    public var isFinishing: Bool { finishing.load(ordering: .acquiring) }

    public init() {
        (jobs, submissions) = AsyncStream.makeStream(of: Job.self)
    }

    /// Runs `job` as soon as `run()` takes it; false when the work has finished (the job is dropped).
    @discardableResult
    public func submit(_ job: @escaping Job) -> Bool {
        if case .terminated = submissions.yield(job) { return false }
        return true
    }

    /// Takes no more jobs; `run()` returns once the ones in hand are done.
    public func finish() {
        finishing.store(true, ordering: .releasing)
        submissions.finish()
    }

    /// Runs the jobs, each in a child task, until `finish()` (then the jobs in hand complete) or
    /// cancellation. Call it once.
    public func run() async {
        await withDiscardingTaskGroup { group in
            for await job in jobs {
                group.addTask { await job() }
            }
        }
    }
}
