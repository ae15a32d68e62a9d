import NIOSSL
import Foundation
import JWTKit
import PlaybackCore

/// Mints HS256 access tokens the daemon accepts: same claims, same development secret and
/// environment variable (`PLAYBACK_JWT_SECRET`) as `playback-syncd`.
public enum AccessTokens {
    struct Claims: JWTPayload {
        var sub: SubjectClaim
        var exp: ExpirationClaim
        var country: String?
        var tier: String?

        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// The secret from the argument, else `PLAYBACK_JWT_SECRET`, else the development secret.
    public static func secret(_ explicit: String? = nil) -> String {
        explicit ?? ProcessInfo.processInfo.environment["PLAYBACK_JWT_SECRET"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ProtocolInfo.developmentJWTSecret
    }

    public static func mint(user: String, ttlSeconds: Int, country: String? = nil, tier: String? = nil, secret: String? = nil)
        async throws -> String
    {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: Self.secret(secret)), digestAlgorithm: .sha256)
        return try await keys.sign(Claims(
            sub: .init(value: user), exp: .init(value: Date().addingTimeInterval(TimeInterval(ttlSeconds))),
            country: country, tier: tier))
    }

    /// Parses durations like `90s`, `15m`, `12h`, `7d` (plain numbers are seconds).
    public static func seconds(_ text: String) -> Int? {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3_600, "d": 86_400]
        if let unit = text.last, let factor = units[unit], let value = Int(text.dropLast()) { return value * factor }
        return Int(text)
    }
}

/// TLS settings that trust the certificates of a PEM file (a self-signed daemon), for wss://.
public enum TrustedCertificates {
    public static func tls(caFile path: String) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(path))
        return tls
    }
}
