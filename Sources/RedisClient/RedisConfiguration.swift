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
            throw RedisError(.invalidURL, "expected redis://[user:password@]host[:port][/db], got \(Self.redacted(url))")
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

    /// Where it connects, for logs: no password.
    public var redacted: String {
        let user = username.map { "\($0)\(password == nil ? "" : ":***")@" } ?? (password == nil ? "" : ":***@")
        return "redis://\(user)\(host):\(port)/\(database)"
    }

    /// A Redis URL with any password replaced by `***`, for logs and error messages.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url.range(of: "@", range: schemeEnd.upperBound..<url.endIndex) else { return url }
        let userInfo = url[schemeEnd.upperBound..<at.lowerBound]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<url.index(after: colon)]) + "***" + String(url[at.lowerBound...])
    }
}
