import Foundation
import Hummingbird
import HTTPTypes
import NIOCore
import PlaybackCore

/// The web remote: a page at `/` (plain HTML, CSS and JavaScript from the package's resources,
/// read once at start) that is itself a device, and, in development mode only, an endpoint that
/// mints a token for a user name so the page can sign in without an identity provider.
struct WebRoutes {
    let authenticator: Authenticator
    /// True only while the public development secret is in use: anyone could mint tokens then anyway.
    let developmentTokens: Bool

    /// A file served from memory.
    struct Asset: Sendable {
        var contentType: String
        var bytes: ByteBuffer
    }

    /// path → asset; empty when the resources are missing (the page is then 404, the API unaffected).
    static let assets: [String: Asset] = {
        let files: [(path: String, name: String, ext: String, type: String)] = [
            ("/", "index", "html", "text/html; charset=utf-8"),
            ("/app.js", "app", "js", "text/javascript; charset=utf-8"),
            ("/app.css", "app", "css", "text/css; charset=utf-8"),
        ]
        var assets: [String: Asset] = [:]
        for file in files {
            guard let url = Bundle.module.url(forResource: file.name, withExtension: file.ext, subdirectory: "Resources"),
                let data = try? Data(contentsOf: url)
            else { continue }
            assets[file.path] = Asset(contentType: file.type, bytes: ByteBuffer(bytes: data))
        }
        return assets
    }()

    struct TokenRequest: Decodable {
        var user: String
        var country: String?
    }

    struct TokenResponse: Encodable {
        var token: String
        var expiresAt: Int64

        enum CodingKeys: String, CodingKey {
            case token
            case expiresAt = "expires_at"
        }
    }

    /// Development tokens live 12 hours.
    static let developmentTokenTTL: TimeInterval = 12 * 3_600

    func register(on router: Router<BasicRequestContext>) {
        for (path, asset) in Self.assets {
            router.get(.init(path)) { _, _ -> Response in
                Response(
                    status: .ok,
                    headers: [.contentType: asset.contentType, .cacheControl: "no-cache", .xContentTypeOptions: "nosniff"],
                    body: .init(byteBuffer: asset.bytes))
            }
        }
        router.get("/v1/dev") { _, _ -> Response in
            try RESTResponse.json(["development_tokens": developmentTokens])
        }
        router.post("/v1/dev/token") { request, _ -> Response in
            guard developmentTokens else {
                return ErrorResponse.make(
                    status: .notFound, code: "not_found", message: "development tokens are disabled: a real JWT secret is configured")
            }
            var request = request
            let body: TokenRequest
            do {
                body = try JSONDecoder().decode(TokenRequest.self, from: try await request.collectBody(upTo: 4_096))
            } catch {
                return RESTResponse.error(.badRequest("expected {\"user\": \"name\", \"country\"?: \"SE\"}"))
            }
            guard AccessToken.isValidUserID(body.user) else {
                return RESTResponse.error(.badRequest("user must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"))
            }
            if let country = body.country, country.count != 2 || !country.allSatisfy(\.isLetter) {
                return RESTResponse.error(.badRequest("country must be an ISO 3166-1 alpha-2 code"))
            }
            let expires = Date().addingTimeInterval(Self.developmentTokenTTL)
            do {
                let token = try await authenticator.sign(AccessToken(user: body.user, expires: expires, country: body.country?.uppercased()))
                return try RESTResponse.json(TokenResponse(token: token, expiresAt: Int64(expires.timeIntervalSince1970 * 1_000)))
            } catch {
                return RESTResponse.error(PlaybackError(.internal, "could not sign a token"))
            }
        }
    }
}
