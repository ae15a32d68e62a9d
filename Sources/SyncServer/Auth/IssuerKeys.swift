import AsyncHTTPClient
import Foundation
import JWTKit
import Logging
import Metrics
import NIOCore
import ServiceLifecycle

/// An identity provider's public signing keys (a JWKS), from a file or an HTTPS URL.
///
/// The keys are loaded at start, fetched again when a token names a `kid` they lack (at most once
/// per `minimumRefreshInterval`), and in the background once they are older than `maximumAge`.
/// A fetch that fails, times out or returns a set this daemon refuses changes nothing: the keys it
/// had keep serving, and the failure is logged and counted. Fetches run in `run()`, a service of
/// the daemon: one at a time, and every token waiting for one is answered when it ends.
public actor IssuerKeys: Service {
    /// Where the key set is read from.
    public enum Source: Sendable, Equatable, CustomStringConvertible {
        case file(String)
        case url(String)

        /// A path, or an `https://` URL; `http://` only to this machine (tests, a local sidecar).
        public init(_ location: String) throws(ConfigurationError) {
            let lowered = location.lowercased()
            if lowered.hasPrefix("https://") {
                self = .url(location)
            } else if lowered.hasPrefix("http://") {
                guard let host = URL(string: location)?.host, ["127.0.0.1", "localhost", "::1", "[::1]"].contains(host) || host.hasPrefix("127.")
                else {
                    throw ConfigurationError(description: "the JWKS URL must use https:// (http:// only to this machine): \(location)")
                }
                self = .url(location)
            } else if lowered.contains("://") {
                throw ConfigurationError(description: "the JWKS must be a file or an https:// URL: \(location)")
            } else {
                self = .file(location)
            }
        }

        public var description: String {
            switch self {
            case .file(let path): path
            case .url(let url): url
            }
        }
    }

    /// How the key set is kept fresh.
    public struct Settings: Sendable, Equatable {
        /// The least time between two fetches that a token's unknown `kid` causes.
        public var minimumRefreshInterval: Duration = .seconds(5)
        /// Keys older than this are fetched again in the background on their next use.
        public var maximumAge: Duration = .seconds(600)
        /// The longest a fetch may take, connection included.
        public var fetchTimeout: Duration = .seconds(5)

        public init() {}
    }

    /// Why a key set was refused.
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// The largest key set read, in bytes; real ones are a few kilobytes.
    static let maximumBytes = 1 << 20
    /// The longest `kid` accepted, in a key set or in a token.
    public static let maximumKeyIDBytes = 256
    /// The smallest RSA modulus accepted.
    static let minimumRSABits = 2_048

    /// One usable key: its collection holds it alone, so a token cannot reach another key.
    struct Key {
        let keyType: JWK.KeyType
        let algorithm: String?
        let collection: JWTKeyCollection
    }

    public nonisolated let source: Source
    let settings: Settings
    let logger: Logger
    private var keys: [String: Key] = [:]
    private var loadedAt: ContinuousClock.Instant?
    private var lastFetch: ContinuousClock.Instant?
    /// Asks `run()` for a fetch; at most one is pending.
    private let requests: AsyncStream<Void>.Continuation
    private let requested: AsyncStream<Void>
    private var fetchPending = false
    private var fetchRunning = false
    private var running = false
    /// Tokens waiting for the pending or running fetch.
    private var waiters: [CheckedContinuation<Void, Never>] = []

    private let refreshes: (ok: Counter, failed: Counter)
    private let keyCount: Gauge

    public init(source: Source, settings: Settings = Settings(), logger: Logger) {
        self.source = source
        self.settings = settings
        self.logger = logger
        refreshes = (
            Counter(label: "playback_jwks_refreshes_total", dimensions: [("outcome", "ok")]),
            Counter(label: "playback_jwks_refreshes_total", dimensions: [("outcome", "failed")])
        )
        keyCount = Gauge(label: "playback_jwks_keys")
        (requested, requests) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Fetches whenever asked, until the daemon stops; then answers every waiting token.
    public func run() async throws {
        running = true
        defer {
            running = false
            answerWaiters()
        }
        for await _ in requested.cancelOnGracefulShutdown() {
            fetchPending = false
            fetchRunning = true
            _ = await fetchAndInstall()
            fetchRunning = false
            answerWaiters()
        }
    }

    private func answerWaiters() {
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting { waiter.resume() }
    }

    /// Asks for a fetch unless one is pending already.
    private func requestFetch() {
        guard !fetchPending else { return }
        fetchPending = true
        requests.yield()
    }

    /// Loads the keys once; the error says why they could not be (the daemon may still start and
    /// retry, for a URL).
    public func load() async throws(Refusal) {
        let result = await fetchAndInstall()
        if case .failure(let refusal) = result { throw refusal }
    }

    /// The number of keys held now.
    public var count: Int { keys.count }

    /// The collection holding the key `kid` names, if the key may verify `algorithm`.
    func collection(kid: String, algorithm: String) async throws(AuthError) -> JWTKeyCollection {
        guard kid.utf8.count <= Self.maximumKeyIDBytes else { throw .unknownKey }
        if let loadedAt, loadedAt.duration(to: .now) > settings.maximumAge, running, !fetchRunning, !fetchedRecently {
            // Old keys keep serving while the new ones are fetched (at most once per interval
            // while the issuer fails).
            requestFetch()
        }
        var key = keys[kid]
        if key == nil {
            await refreshIfAllowed()
            key = keys[kid]
        }
        guard let key else { throw loadedAt == nil ? .keysUnavailable : .unknownKey }
        if let declared = key.algorithm, declared != algorithm { throw .algorithmMismatch }
        guard Self.fits(algorithm, key.keyType) else { throw .algorithmMismatch }
        return key.collection
    }

    /// Whether a fetch started within `minimumRefreshInterval`.
    private var fetchedRecently: Bool {
        lastFetch.map { $0.duration(to: .now) < settings.minimumRefreshInterval } ?? false
    }

    /// Fetches unless a fetch ran within `minimumRefreshInterval`, joining one pending, and waits
    /// for it to end.
    private func refreshIfAllowed() async {
        guard running else { return }
        if !fetchPending, !fetchRunning {
            guard !fetchedRecently else { return }
            requestFetch()
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    private func fetchAndInstall() async -> Result<Void, Refusal> {
        lastFetch = .now
        do {
            let data = try await fetch()
            let parsed = try await Self.parse(data)
            keys = parsed.keys
            loadedAt = .now
            refreshes.ok.increment()
            keyCount.record(keys.count)
            logger.info(
                "loaded the issuer's signing keys",
                metadata: [
                    "jwks": .string(source.description), "jwks.kids": .array(keys.keys.sorted().map { .string($0) }),
                    "jwks.skipped": .stringConvertible(parsed.skipped),
                ])
            return .success(())
        } catch let refusal as Refusal {
            refreshes.failed.increment()
            logger.warning(
                "the issuer's signing keys were not updated; the keys already loaded keep serving",
                metadata: ["jwks": .string(source.description), "error": .string(refusal.description), "jwks.kept": .stringConvertible(keys.count)])
            return .failure(refusal)
        } catch {
            refreshes.failed.increment()
            let refusal = Refusal(description: "\(error)")
            logger.warning(
                "the issuer's signing keys were not updated; the keys already loaded keep serving",
                metadata: ["jwks": .string(source.description), "error": .string(refusal.description), "jwks.kept": .stringConvertible(keys.count)])
            return .failure(refusal)
        }
    }

    // MARK: Reading

    private func fetch() async throws -> Data {
        switch source {
        case .file(let path):
            guard let handle = FileHandle(forReadingAtPath: path) else { throw Refusal(description: "cannot read \(path)") }
            defer { try? handle.close() }
            let data = try handle.read(upToCount: Self.maximumBytes + 1) ?? Data()
            guard data.count <= Self.maximumBytes else { throw Refusal(description: "the key set is larger than \(Self.maximumBytes) bytes") }
            return data
        case .url(let url):
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Accept", value: "application/json, application/jwk-set+json")
            let timeout = TimeAmount.nanoseconds(Int64(settings.fetchTimeout.components.seconds) * 1_000_000_000
                + settings.fetchTimeout.components.attoseconds / 1_000_000_000)
            let response = try await Self.client.execute(request, timeout: timeout)
            guard response.status == .ok else {
                throw Refusal(description: "GET \(url) answered \(response.status.code) \(response.status.reasonPhrase)")
            }
            let body: ByteBuffer
            do {
                body = try await response.body.collect(upTo: Self.maximumBytes)
            } catch is NIOTooManyBytesError {
                throw Refusal(description: "the key set is larger than \(Self.maximumBytes) bytes")
            }
            return Data(body.readableBytesView)
        }
    }

    /// One client for the process: no redirects (a key set moved elsewhere is a configuration
    /// change), and a connection that must come up within a second of the fetch's timeout.
    private static let client = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: HTTPClient.Configuration.Timeout(connect: .seconds(5), read: .seconds(5))))

    // MARK: Checking

    private struct Entry: Decodable {
        var kty: String?
        var use: String?
        var kid: String?
        var alg: String?
        var crv: String?
        var n: String?
        var d: String?
    }

    private struct Document: Decodable {
        var keys: [Entry]
    }

    static let algorithms: Set<String> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

    static func fits(_ algorithm: String, _ keyType: JWK.KeyType) -> Bool {
        switch keyType {
        case .rsa: algorithm.hasPrefix("RS") || algorithm.hasPrefix("PS")
        case .ecdsa: algorithm.hasPrefix("ES")
        case .octetKeyPair: algorithm == "EdDSA"
        default: false
        }
    }

    /// The usable keys of a key set, or why the set is refused. Encryption keys (`use: enc`, which
    /// Keycloak publishes beside its signing keys) are skipped; a signing key that is weak, private,
    /// symmetric, malformed or without a `kid` refuses the whole set.
    static func parse(_ data: Data) async throws(Refusal) -> (keys: [String: Key], skipped: Int) {
        let decoder = JSONDecoder()
        let document: Document
        let jwks: JWKS
        do {
            document = try decoder.decode(Document.self, from: data)
            jwks = try decoder.decode(JWKS.self, from: data)
        } catch {
            throw Refusal(description: "the key set is not a JSON object with a \"keys\" array of keys")
        }
        guard document.keys.count == jwks.keys.count else { throw Refusal(description: "the key set could not be read") }
        var keys: [String: Key] = [:]
        var skipped = 0
        for (entry, jwk) in zip(document.keys, jwks.keys) {
            if let use = entry.use, use != "sig" {
                skipped += 1
                continue
            }
            guard let kid = entry.kid, !kid.isEmpty else { throw Refusal(description: "a signing key has no kid") }
            let name = "key \(kid.prefix(64))"
            guard kid.utf8.count <= maximumKeyIDBytes else { throw Refusal(description: "a kid is longer than \(maximumKeyIDBytes) bytes") }
            guard keys[kid] == nil else { throw Refusal(description: "\(name) appears twice") }
            guard entry.d == nil else { throw Refusal(description: "\(name) holds private key material (d): publish public keys only") }
            switch entry.kty {
            case "RSA":
                let bits = entry.n.flatMap(modulusBits) ?? 0
                guard bits >= minimumRSABits else {
                    throw Refusal(description: "\(name) is a \(bits)-bit RSA key; at least \(minimumRSABits) bits are required")
                }
            case "EC":
                guard let curve = entry.crv, ["P-256", "P-384", "P-521"].contains(curve) else {
                    throw Refusal(description: "\(name) is on an unsupported curve")
                }
            case "OKP":
                guard entry.crv == "Ed25519" else { throw Refusal(description: "\(name) is on an unsupported curve") }
            default:
                throw Refusal(description: "\(name) is of type \(entry.kty ?? "none"): only RSA, EC and OKP signing keys are accepted")
            }
            if let alg = entry.alg, !algorithms.contains(alg) { throw Refusal(description: "\(name) is declared for \(alg), which is not accepted") }
            if let alg = entry.alg, !fits(alg, jwk.keyType) { throw Refusal(description: "\(name) is declared for \(alg), which its type cannot do") }
            let collection = JWTKeyCollection()
            do {
                try await collection.add(jwk: jwk, isDefault: false)
            } catch {
                throw Refusal(description: "\(name) is not a valid key: \(error)")
            }
            keys[kid] = Key(keyType: jwk.keyType, algorithm: entry.alg, collection: collection)
        }
        guard !keys.isEmpty else { throw Refusal(description: "the key set holds no signing key") }
        return (keys, skipped)
    }

    /// The bit length of a base64url big-endian modulus.
    static func modulusBits(_ base64URL: String) -> Int? {
        guard let bytes = Data(base64URL: Substring(base64URL)), let first = bytes.firstIndex(where: { $0 != 0 }) else { return nil }
        let leading = bytes[first]
        return (bytes.count - (first - bytes.startIndex)) * 8 - leading.leadingZeroBitCount
    }
}
