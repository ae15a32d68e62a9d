import DequeModule

/// Remembers the final answer to each request id of one user for the window, so that a retried
/// command is answered again without being applied twice. At most `capacity` ids inside the
/// window: when full, a new id is refused (`isFull`) rather than an old one forgotten early.
public struct RequestLog: Sendable {
    private var answers: [String: Result<Receipt, PlaybackError>] = [:]
    /// The ids by when they leave the window (server ms), oldest first.
    private var order: Deque<(id: String, until: Int64)> = []
    public let windowMs: Int64
    public let capacity: Int

    public init(windowMs: Int64, capacity: Int) {
        self.windowMs = windowMs
        self.capacity = capacity
    }

    public var count: Int { answers.count }

    public mutating func answer(for id: String, now: Int64) -> Result<Receipt, PlaybackError>? {
        expire(now: now)
        return answers[id]
    }

    /// Records a final answer for `windowMs` (or the log's own window); transient errors are not remembered.
    public mutating func record(_ answer: Result<Receipt, PlaybackError>, for id: String, now: Int64, windowMs: Int64? = nil) {
        if case .failure(let error) = answer, error.code.isTransient { return }
        guard answers.updateValue(answer.map { Receipt(version: $0.version, entry: $0.entry, changed: false) }, forKey: id) == nil
        else { return }
        order.append((id, now + (windowMs ?? self.windowMs)))
    }

    /// When as many ids are remembered as may be (`capacity`, or the log's own): how long until
    /// the oldest leaves the window.
    public mutating func fullFor(now: Int64, capacity: Int? = nil) -> Int64? {
        expire(now: now)
        guard order.count >= capacity ?? self.capacity, let oldest = order.first else { return nil }
        return max(1, oldest.until - now)
    }

    private mutating func expire(now: Int64) {
        while let oldest = order.first, now > oldest.until {
            order.removeFirst()
            answers[oldest.id] = nil
        }
    }
}
