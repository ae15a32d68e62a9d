import PlaybackEngine

/// Everything the daemon can be configured with. `playback-syncd` fills it from flags and
/// environment variables; tests build it directly.
public struct ServerConfiguration: Sendable {
    /// The secret used when none is configured; fine on a laptop, never in production.
    public static let developmentJWTSecret = ProtocolInfo.developmentJWTSecret

    public var host = "127.0.0.1"
    /// 0 picks a free port (tests).
    public var port = 8080
    /// HS256 secret, at least 32 bytes. With `jwks` set, the development secret means none: HS256
    /// tokens are then refused.
    public var jwtSecret = ServerConfiguration.developmentJWTSecret
    /// The identity provider's public keys, if its tokens are accepted.
    public var jwks: IssuerKeys.Source?
    public var jwksSettings = IssuerKeys.Settings()
    /// What every token must claim, and which claims carry the user and the country.
    public var tokenRules = TokenRules()
    /// Allowed `Origin` values for browsers; empty allows any.
    public var allowedOrigins: [String] = []
    public var heartbeatMs: Int64 = ProtocolInfo.heartbeatMs
    public var helloTimeoutMs: Int64 = ProtocolInfo.helloTimeoutMs
    public var maxMessageBytes = ProtocolInfo.maxMessageBytes
    public var messagesPerSecond = ProtocolInfo.messagesPerSecond
    public var messageBurst = ProtocolInfo.messageBurst
    /// Rate-limited messages within one second before the connection is closed with 4029.
    public var rateLimitStrikes = 100
    public var malformedLimit = ProtocolInfo.malformedLimit
    /// Outbound bytes buffered for one connection before it is closed with 4008.
    public var sendBufferBytes = 1 << 20
    /// Time for a new connection's TLS handshake and request head, and the longest an HTTP
    /// connection may stay idle.
    public var requestTimeoutMs: Int64 = 10_000
    /// How long to wait for the peer's close frame after sending ours.
    public var closeTimeoutMs: Int64 = 1_000
    /// Messages decoded but not yet handled before the connection stops reading.
    public var maxPendingMessages = 32
    public var engine = EngineConfiguration()
    /// On a graceful shutdown each session is closed with 1001 and a retry hint drawn from
    /// `[0, drainWindowMs]`, so that the devices come back (to other daemons) spread over the
    /// window instead of at once. At most half the grace is used: a holder back at the end of the
    /// window still has its lease.
    public var drainWindowMs: Int64 = 5_000
    public var effectiveDrainWindowMs: Int64 { max(0, min(drainWindowMs, engine.graceMs / 2)) }
    /// Serves `/v1/diagnostics/echo`, an unauthenticated echo on the same WebSocket pipeline, for
    /// conformance test suites only. Never enable it in production.
    public var diagnosticsEcho = false
    /// Offer permessage-deflate (RFC 7692, no context takeover) to clients that ask for it.
    public var permessageDeflate = false
    /// PEM certificate chain and private key: serve wss:// and https:// on the same port.
    public var tls: TLSFiles?
    /// Serve with the public development secret on an address other than loopback. Anyone can mint
    /// tokens then: for a demo on a private network, never in production.
    public var insecureDevelopmentSecretOnNetwork = false

    /// Where the TLS certificate chain and key are (PEM).
    public struct TLSFiles: Sendable, Equatable {
        public var certificatePath: String
        public var keyPath: String

        public init(certificatePath: String, keyPath: String) {
            self.certificatePath = certificatePath
            self.keyPath = keyPath
        }
    }

    public init() {}

    /// Whether HS256 tokens signed with the public development secret are accepted.
    public var usesDevelopmentSecret: Bool { jwtSecret == Self.developmentJWTSecret && jwks == nil }

    /// The HS256 secret tokens may be signed with, if any.
    public var acceptedSecret: String? { jwks != nil && jwtSecret == Self.developmentJWTSecret ? nil : jwtSecret }

    /// Whether `host` only accepts connections from this machine.
    public var listensOnLoopbackOnly: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The settings the daemon refuses to start with, each with what to do instead.
    public func validate() throws(ConfigurationError) {
        guard jwtSecret.utf8.count >= 32 else {
            throw ConfigurationError(description: "the JWT secret must be at least 32 bytes (HS256)")
        }
        if usesDevelopmentSecret, !listensOnLoopbackOnly, !insecureDevelopmentSecretOnNetwork {
            throw ConfigurationError(description: """
                no JWT secret is configured and --host \(host) is reachable from other machines: with the public \
                development secret anyone could mint tokens. Set --jwt-secret or PLAYBACK_JWT_SECRET (at least 32 bytes), \
                or pass --insecure-development-secret-on-network for a demo
                """)
        }
    }
}
