import Foundation

/// Where and how to connect, usually from a `redis://[user:password@]host[:port][/db]` URL, or
/// `redis+cluster://[user:password@]host1:port1,host2:port2,…` for a Redis Cluster (the hosts are
/// seeds: any reachable one tells where the others are).
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
    /// The nodes to read a cluster's slot map from; nil for a single server.
    public var clusterSeeds: [RedisNodeAddress]?

    public var isCluster: Bool { clusterSeeds != nil }

    public init() {}

    public init(url: String) throws {
        self.init()
        if url.hasPrefix("redis+cluster://") {
            try readCluster(url: url)
            return
        }
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

    private mutating func readCluster(url: String) throws {
        let usage = "expected redis+cluster://[user:password@]host:port[,host:port…], got \(Self.redacted(url))"
        var rest = url.dropFirst("redis+cluster://".count)
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" || $0 == "0" }) else { throw RedisError(.invalidURL, "a cluster has only database 0: \(usage)") }
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let parts = userInfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            username = parts.first.flatMap { $0.isEmpty ? nil : String($0).removingPercentEncoding }
            password = parts.count > 1 ? String(parts[1]).removingPercentEncoding : nil
        }
        let seeds = try rest.split(separator: ",").map { text -> RedisNodeAddress in
            let text = text.trimmingCharacters(in: .whitespaces)
            if let address = RedisNodeAddress(text[...]) { return address }
            guard !text.isEmpty, !text.contains(":") else { throw RedisError(.invalidURL, usage) }
            return RedisNodeAddress(host: text, port: 6379)
        }
        guard let first = seeds.first else { throw RedisError(.invalidURL, usage) }
        host = first.host
        port = first.port
        clusterSeeds = seeds
    }

    /// The same settings for one node of a cluster (database 0, the only one a cluster has).
    func node(at address: RedisNodeAddress) -> RedisConfiguration {
        var configuration = self
        configuration.host = address.host
        configuration.port = address.port
        configuration.clusterSeeds = nil
        configuration.database = 0
        return configuration
    }

    /// Where it connects, for logs: no password.
    public var redacted: String {
        let user = username.map { "\($0)\(password == nil ? "" : ":***")@" } ?? (password == nil ? "" : ":***@")
        if let clusterSeeds { return "redis+cluster://\(user)\(clusterSeeds.map(\.description).joined(separator: ","))" }
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
