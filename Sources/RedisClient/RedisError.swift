/// Errors of the Redis client, with a code for logs and metrics.
public struct RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The connection dropped; pending commands were failed.
        case connectionClosed = "connection_closed"
        /// Not connected, and reconnecting has not succeeded yet.
        case unavailable
        /// No reply within the command timeout (the connection is closed).
        case timeout
        /// An error reply from the server.
        case server
        /// Bytes that are not RESP.
        case protocolError = "protocol_error"
        case invalidURL = "invalid_url"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "redis \(code.rawValue): \(message)" }
}
