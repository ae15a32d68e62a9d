import Foundation

/// Where and how to connect, usually from a `redis://[user:password@]host[:port][/db]` URL.
public struct RedisConfiguration: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 6379
    public var username: String?
    public var password: String?
    public var database = 0
    public var connectTimeoutMs: Int64 = 2_000
    public var commandTimeoutMs: Int64 = 2_000
    /// `CLIENT SETNAME` on every connection, so operators can tell connections apart.
    public var clientName: String?
    /// Longest wait between reconnection attempts.
    public var maxBackoffMs: Int64 = 2_000

    public init() {}

    public init(url: String) throws {
        guard let components = URLComponents(string: url), components.scheme == "redis", let host = components.host, !host.isEmpty else {
            throw RedisError(.invalidURL, "expected redis://[user:password@]host[:port][/db], got \(url)")
        }
        self.host = host
        port = components.port ?? 6379
        username = components.user.flatMap { $0.isEmpty ? nil : $0.removingPercentEncoding }
        password = components.password?.removingPercentEncoding
        let path = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        if !path.isEmpty {
            guard let database = Int(path), database >= 0 else { throw RedisError(.invalidURL, "database must be a number: \(path)") }
            self.database = database
        }
    }
}
