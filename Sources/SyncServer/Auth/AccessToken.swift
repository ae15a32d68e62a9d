import Foundation
import JWTKit
import PlaybackEngine

/// The claims of an access token: `sub` is the user, `exp` the end of the session;
/// `country` drives licensing, `tier` is informational.
public struct AccessToken: JWTPayload, Equatable {
    public var sub: SubjectClaim
    public var exp: ExpirationClaim
    public var country: String?
    public var tier: String?

    public init(user: String, expires: Date, country: String? = nil, tier: String? = nil) {
        sub = SubjectClaim(value: user)
        exp = ExpirationClaim(value: expires)
        self.country = country
        self.tier = tier
    }

    /// The latest `exp` accepted: the end of the year 9999 (seconds since the epoch). Later ones,
    /// and ones that are no number of seconds at all, are refused rather than turned into a time.
    public static let latestExpiry: TimeInterval = 253_402_300_799

    /// Tokens are read as `TokenClaims` and checked by `TokenRules`; this type is only signed.
    public func verify(using algorithm: some JWTAlgorithm) async throws {}

    /// 1–128 characters of `[A-Za-z0-9._:@-]`.
    public static func isValidUserID(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= 128 else { return false }
        return utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"),
                UInt8(ascii: "@"), UInt8(ascii: "-"):
                true
            default: false
            }
        }
    }

    public var identity: UserIdentity { UserIdentity(userID: sub.value, country: country?.uppercased(), tier: tier) }
    /// When the token expires, server ms; verified tokens are within `latestExpiry`, others clamp.
    public var expiresAtMs: Int64 {
        let ms = exp.value.timeIntervalSince1970 * 1_000
        guard ms.isFinite else { return ms < 0 ? 0 : .max }
        return Int64(min(max(ms, 0), Self.latestExpiry * 1_000))
    }
}

/// Why a request was not authenticated.
public enum AuthError: Error, Equatable, Sendable {
    case missingToken
    case invalidToken
    case invalidSubject
    case invalidCountry
    case invalidExpiry
    case expired
    case notYetValid
    case missingClaim(String)
    case wrongIssuer
    case wrongAudience
    /// `none`, an algorithm this daemon does not know, or HS256 where only the issuer's keys count.
    case unsupportedAlgorithm
    case missingKeyID
    /// A header over 4 KB (a 10 KB `kid`, say) is not read.
    case oversizedHeader
    /// The `kid` is in none of the issuer's keys, even after fetching them again.
    case unknownKey
    /// The key named by `kid` is of another type or declared for another algorithm.
    case algorithmMismatch
    case badSignature
    /// The issuer's keys could not be loaded yet: try again shortly (503).
    case keysUnavailable
    case foreignOrigin

    public var message: String {
        switch self {
        case .missingToken: "no access token: send Authorization: Bearer <jwt> or ?access_token="
        case .invalidToken: "the access token is malformed"
        case .invalidSubject: "the token's user id must be 1–128 characters of A-Z a-z 0-9 . _ : @ -"
        case .invalidCountry: "the token's country must be a two-letter code"
        case .invalidExpiry: "the token's exp is not a time before the year 10000"
        case .expired: "the access token has expired"
        case .notYetValid: "the access token is not valid yet (nbf)"
        case .missingClaim(let name): "the access token has no \(name) claim"
        case .wrongIssuer: "the access token is from another issuer (iss)"
        case .wrongAudience: "the access token is for another audience (aud)"
        case .unsupportedAlgorithm: "the token's signing algorithm (alg) is not accepted here"
        case .missingKeyID: "the token names no signing key (kid)"
        case .oversizedHeader: "the token's header is larger than 4 KB"
        case .unknownKey: "the token's signing key (kid) is not among the issuer's keys"
        case .algorithmMismatch: "the token's alg does not match its signing key"
        case .badSignature: "the access token's signature is not valid"
        case .keysUnavailable: "the issuer's signing keys could not be loaded yet; try again shortly"
        case .foreignOrigin: "this Origin is not allowed"
        }
    }

    /// The HTTP status a request refused for this reason gets, with its error code.
    public var status: (code: Int, name: String) {
        switch self {
        case .foreignOrigin: (403, "forbidden")
        case .keysUnavailable: (503, "unavailable")
        default: (401, "unauthorized")
        }
    }

    /// A short label for metrics and logs.
    public var reason: String {
        switch self {
        case .missingToken: "missing_token"
        case .invalidToken: "malformed"
        case .invalidSubject: "invalid_subject"
        case .invalidCountry: "invalid_country"
        case .invalidExpiry: "invalid_expiry"
        case .expired: "expired"
        case .notYetValid: "not_yet_valid"
        case .missingClaim: "missing_claim"
        case .wrongIssuer: "wrong_issuer"
        case .wrongAudience: "wrong_audience"
        case .unsupportedAlgorithm: "unsupported_algorithm"
        case .missingKeyID: "missing_kid"
        case .oversizedHeader: "oversized_header"
        case .unknownKey: "unknown_kid"
        case .algorithmMismatch: "algorithm_mismatch"
        case .badSignature: "bad_signature"
        case .keysUnavailable: "keys_unavailable"
        case .foreignOrigin: "foreign_origin"
        }
    }
}
