import Foundation

/// Where PostgreSQL is, from a `postgres://user[:password]@host[:port]/database[?sslmode=…]` URL.
public struct PostgresSettings: Sendable, Equatable {
    public enum TLSMode: String, Sendable {
        case disable, prefer, require
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// Most pooled connections.
    public var maxConnections = 8
    /// Connect timeout and the deadline of every statement the daemon runs.
    public var timeout: Duration = .seconds(2)

    public init(url text: String) throws(StoreError) {
        guard let url = URLComponents(string: text), let scheme = url.scheme,
            scheme == "postgres" || scheme == "postgresql"
        else { throw StoreError(.configuration, "not a postgres:// URL: \(text)") }
        host = url.host.flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1"
        port = url.port ?? 5432
        user = url.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        password = url.password.flatMap { $0.removingPercentEncoding }
        let path = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        database = path.isEmpty ? user : path
        let mode = url.queryItems?.first { $0.name == "sslmode" }?.value ?? "disable"
        guard let tls = TLSMode(rawValue: mode) else {
            throw StoreError(.configuration, "sslmode must be disable, prefer or require, not \(mode)")
        }
        self.tls = tls
    }

    /// The URL without its password, for logs.
    public var redacted: String { "postgres://\(user)@\(host):\(port)/\(database)" }
}

/// A storage failure with a code for logs and metrics.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// `rejected`: PostgreSQL refused the data itself (SQLSTATE classes 22 and 23: a value its
        /// column cannot hold, a broken constraint); writing it again fails again.
        case configuration, unavailable, timeout, query, rejected, corrupt
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
