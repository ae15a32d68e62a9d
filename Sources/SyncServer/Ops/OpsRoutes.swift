import Foundation
import Hummingbird
import PlaybackEngine
import Prometheus

/// `GET /healthz` (the process answers), `GET /readyz` (the engine can serve) and
/// `GET /metrics` (Prometheus text).
struct OpsRoutes {
    /// `GET /readyz`: `ready`, `degraded` (serving, but e.g. PostgreSQL writes are queued) or `not_ready`.
    struct ReadinessBody: Encodable {
        var status: String
        var checks: [String: String]
    }

    let engine: any PlaybackEngine
    let metrics: PrometheusCollectorRegistry?

    func register(on router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/readyz") { _, _ -> Response in
            let readiness = await engine.readiness()
            let status = readiness.ready ? (readiness.degraded ? "degraded" : "ready") : "not_ready"
            let body = ReadinessBody(status: status, checks: readiness.checks)
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let bytes = (try? encoder.encode(body)) ?? Data(#"{"status":"\#(status)"}"#.utf8)
            return Response(
                status: readiness.ready ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.get("/metrics") { _, _ -> Response in
            var text: [UInt8] = []
            metrics?.emit(into: &text)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
    }
}

/// Answers `GET /v1/connect` requests that were not upgraded: 401 or 403 when the upgrade was
/// refused for its token or Origin, 426 when it was not a WebSocket upgrade at all.
struct ConnectRoute {
    let authenticator: Authenticator

    func register(on router: Router<BasicRequestContext>) {
        router.get(.init(SyncChildChannel.webSocketPath)) { request, _ -> Response in
            do throws(AuthError) {
                _ = try await authenticator.authenticate(
                    origin: request.headers[.origin], authorization: request.headers[.authorization], query: request.uri.query)
            } catch {
                return ErrorResponse.make(refusal: error)
            }
            return ErrorResponse.make(
                status: .upgradeRequired, code: "bad_request", message: "GET /v1/connect is a WebSocket endpoint",
                headers: [.upgrade: "websocket"])
        }
    }
}

/// JSON error bodies: `{"error":{"status":..,"code":..,"message":..}}`.
enum ErrorResponse {
    /// A refused authentication: 401 with `WWW-Authenticate: Bearer`, 403 for a foreign Origin,
    /// 503 with `Retry-After` while the identity provider's keys are not loaded.
    static func refusal(_ error: AuthError) -> (status: HTTPResponse.Status, code: String, headers: HTTPFields) {
        let status = HTTPResponse.Status(code: error.status.code)
        var headers: HTTPFields = [:]
        switch error {
        case .foreignOrigin: break
        case .keysUnavailable: headers[.retryAfter] = "5"
        default:
            headers[.wwwAuthenticate] = #"Bearer error="invalid_token""#
            if error == .missingToken { headers[.wwwAuthenticate] = "Bearer" }
        }
        return (status, error.status.name, headers)
    }

    static func make(refusal error: AuthError) -> Response {
        let (status, code, headers) = refusal(error)
        return make(status: status, code: code, message: error.message, headers: headers)
    }

    static func make(status: HTTPResponse.Status, code: String, message: String, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: body(status: status, code: code, message: message)))
    }

    private struct Body: Encodable {
        struct Detail: Encodable {
            var status: Int
            var code: String
            var message: String
        }

        var error: Detail
    }

    static func body(status: HTTPResponse.Status, code: String, message: String) -> ByteBuffer {
        let body = Body(error: .init(status: status.code, code: code, message: message))
        guard let data = try? RESTResponse.encoder.encode(body) else {
            return ByteBuffer(string: #"{"error":{"status":500,"code":"internal","message":"encoding failed"}}"#)
        }
        return ByteBuffer(bytes: data)
    }
}
