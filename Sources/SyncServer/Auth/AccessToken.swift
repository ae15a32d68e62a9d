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

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        let expiry = exp.value.timeIntervalSince1970
        guard expiry.isFinite, expiry <= Self.latestExpiry else { throw AuthError.invalidExpiry }
        try exp.verifyNotExpired()
        guard Self.isValidUserID(sub.value) else { throw AuthError.invalidSubject }
        if let country, country.count != 2 { throw AuthError.invalidCountry }
    }

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
    case foreignOrigin

    public var message: String {
        switch self {
        case .missingToken: "no access token: send Authorization: Bearer <jwt> or ?access_token="
        case .invalidToken: "the access token is malformed or badly signed"
        case .invalidSubject: "the token's sub must be 1–128 characters of A-Z a-z 0-9 . _ : @ -"
        case .invalidCountry: "the token's country must be a two-letter code"
        case .invalidExpiry: "the token's exp is not a time before the year 10000"
        case .expired: "the access token has expired"
        case .foreignOrigin: "this Origin is not allowed"
        }
    }
}
