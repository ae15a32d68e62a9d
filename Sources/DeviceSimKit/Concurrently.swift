/// Runs `open(0..<count)` with at most `limit` calls in flight and returns the results in index
/// order; the first error cancels the rest. Load generators open thousands of connections this way
/// without stampeding the server's accept queue.
func openConcurrently<T: Sendable>(
    count: Int, limit: Int, _ open: @escaping @Sendable (Int) async throws -> T
) async throws -> [T] {
    var results = [T?](repeating: nil, count: count)
    try await withThrowingTaskGroup(of: (Int, T).self) { group in
        var next = 0
        while next < min(max(limit, 1), count) {
            let index = next
            group.addTask { (index, try await open(index)) }
            next += 1
        }
        while let (index, value) = try await group.next() {
            results[index] = value
            if next < count {
                let index = next
                group.addTask { (index, try await open(index)) }
                next += 1
            }
        }
    }
    return results.compactMap { $0 }
}
