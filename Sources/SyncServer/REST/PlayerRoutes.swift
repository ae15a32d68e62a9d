import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PlaybackEngine
import Synchronization
import Tracing

/// The REST remote control, shaped like the public Spotify Web API player endpoints. Every
/// command goes through the same engine path as a WebSocket command (and is broadcast to the
/// user's devices); `Idempotency-Key` is the command id and `If-Match` its `if_version`.
struct PlayerRoutes {
    let engine: any PlaybackEngine
    let authenticator: Authenticator
    let limiter: UserRateLimiter
    let logger: Logger

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!

    func register(on router: Router<BasicRequestContext>) {
        router.get("/v1/me/player") { request, _ in
            await respond(request) { user, _ in
                let (state, devices) = try await snapshot(user)
                if state.track == nil, state.activeDevice == nil { return Response(status: .noContent) }
                return try RESTResponse.json(PlayerBody(state: state, devices: devices), version: state.version)
            }
        }
        router.get("/v1/me/player/devices") { request, _ in
            await respond(request) { user, _ in
                let (state, devices) = try await snapshot(user)
                return try RESTResponse.json(DevicesBody(devices: devices), version: state.version)
            }
        }
        router.get("/v1/me/player/queue") { request, _ in
            await respond(request) { user, _ in
                let (state, _) = try await snapshot(user)
                return try RESTResponse.json(QueueBody(currentlyPlaying: state.track, queue: state.queue ?? []), version: state.version)
            }
        }
        router.put("/v1/me/player") { request, _ in
            await respond(request) { user, request in
                let body = try await Self.decode(TransferBody.self, from: &request)
                guard body.deviceIDs.count == 1, let device = body.deviceIDs.first else {
                    throw PlaybackError.badRequest("device_ids must hold exactly one device id")
                }
                return try await submit(.transfer(device: device, play: body.play), user: user, request: request)
            }
        }
        router.put("/v1/me/player/play") { request, _ in
            await respond(request) { user, request in
                var play = try await Self.decodeIfPresent(PlayBody.self, from: &request).map {
                    Command.Play(trackIDs: $0.trackIDs, context: $0.context, positionMs: $0.positionMs)
                } ?? Command.Play()
                play.device = request.uri.queryParameters.get("device_id")
                return try await submit(.play(play), user: user, request: request)
            }
        }
        router.put("/v1/me/player/pause") { request, _ in
            await respond(request) { user, request in try await submit(.pause, user: user, request: request) }
        }
        router.post("/v1/me/player/next") { request, _ in
            await respond(request) { user, request in try await submit(.next, user: user, request: request) }
        }
        router.post("/v1/me/player/previous") { request, _ in
            await respond(request) { user, request in try await submit(.previous, user: user, request: request) }
        }
        router.put("/v1/me/player/seek") { request, _ in
            await respond(request) { user, request in
                try await submit(.seek(positionMs: try Self.query(request, "position_ms", as: Int64.self)), user: user, request: request)
            }
        }
        router.put("/v1/me/player/volume") { request, _ in
            await respond(request) { user, request in
                let percent = try Self.query(request, "volume_percent", as: Int.self)
                let device: String? = request.uri.queryParameters.get("device_id").map { String($0) }
                return try await submit(.volume(percent: percent, device: device), user: user, request: request)
            }
        }
        router.put("/v1/me/player/repeat") { request, _ in
            await respond(request) { user, request in
                guard let mode = RepeatMode(rawValue: try Self.query(request, "state", as: String.self)) else {
                    throw PlaybackError.badRequest("state must be track, context or off")
                }
                return try await submit(.setRepeat(mode), user: user, request: request)
            }
        }
        router.put("/v1/me/player/shuffle") { request, _ in
            await respond(request) { user, request in
                let state = try Self.query(request, "state", as: String.self)
                guard state == "true" || state == "false" else { throw PlaybackError.badRequest("state must be true or false") }
                return try await submit(.setShuffle(state == "true"), user: user, request: request)
            }
        }
        router.post("/v1/me/player/queue") { request, _ in
            await respond(request) { user, request in
                try await submit(.queueAdd(trackID: try Self.query(request, "track_id", as: String.self), at: .end), user: user, request: request)
            }
        }
        router.get("/v1/me/player/recently-played") { request, _ in
            await respond(request) { user, request in
                let limit = try Self.optionalQuery(request, "limit", as: Int.self) ?? PlayedItem.defaultLimit
                guard (1...PlayedItem.maxLimit).contains(limit) else {
                    throw PlaybackError.badRequest("limit must be from 1 to \(PlayedItem.maxLimit)")
                }
                return try RESTResponse.json(RecentlyPlayedBody(items: try await engine.recentlyPlayed(user: user, limit: limit)))
            }
        }
        router.get("/v1/tracks") { request, _ in
            await respond(request) { _, request in
                let limit = try Self.optionalQuery(request, "limit", as: Int.self) ?? 20
                guard (1...50).contains(limit) else { throw PlaybackError.badRequest("limit must be from 1 to 50") }
                let query = request.uri.queryParameters.get("q") ?? ""
                return try RESTResponse.json(TracksBody(tracks: engine.catalog.search(query, limit: limit)))
            }
        }
    }

    // MARK: Plumbing

    /// Authenticates, rate-limits, runs `body`, and turns every failure into a JSON error.
    func respond(_ request: Request, _ body: (UserIdentity, inout Request) async throws -> Response) async -> Response {
        var request = request
        let user: UserIdentity
        do throws(AuthError) {
            user = try await authenticator.authenticate(
                origin: request.headers[.origin], authorization: request.headers[.authorization], query: request.uri.query
            ).identity
        } catch {
            return ErrorResponse.make(refusal: error)
        }
        // This node's budget first (no round trip for a flood), then the one every node shares.
        if let retryAfterMs = limiter.take(user.userID) {
            return RESTResponse.error(PlaybackError(.rateLimited, "too many requests", retryAfterMs: retryAfterMs))
        }
        if let retryAfterMs = await engine.admitRequest(user: user, rate: limiter.rate, burst: limiter.burst) {
            return RESTResponse.error(PlaybackError(.rateLimited, "too many requests", retryAfterMs: retryAfterMs))
        }
        do {
            return try await body(user, &request)
        } catch let error as PlaybackError {
            return RESTResponse.error(error)
        } catch {
            // The details are for the log; clients learn that it failed, not how.
            logger.error("request failed", metadata: ["http.path": .string(request.uri.path), "error": .string("\(error)")])
            return RESTResponse.error(PlaybackError(.internal, "internal error"))
        }
    }

    private func submit(_ command: Command, user: UserIdentity, request: Request) async throws -> Response {
        let receipt = try await run(command, user: user, request: request)
        return try RESTResponse.json(CommandBody(version: receipt.version, entry: receipt.entry), version: receipt.version)
    }

    /// A command through the engine, as a WebSocket command goes: `Idempotency-Key` is its id,
    /// `If-Match` its `if_version`.
    func run(_ command: Command, user: UserIdentity, request: Request) async throws -> Receipt {
        let ifVersion = try Self.ifMatch(request.headers[.ifMatch])
        let key = request.headers[Self.idempotencyKey]
        if let key, !ProtocolInfo.isValidRequestID(key) {
            throw PlaybackError.badRequest("Idempotency-Key must be 1 to \(ProtocolInfo.maxRequestIDBytes) bytes")
        }
        let started = ContinuousClock.now
        var submission = Submission(user: user, input: .command(command), device: nil, requestID: key, ifVersion: ifVersion)
        // The request's span (TracingMiddleware, which honours a W3C traceparent) is the parent.
        if CommandTracing.isEnabled { submission.traceContext = ServiceContext.current }
        let result = await engine.submit(submission)
        ServerMetrics.commandDuration.record(ContinuousClock.now - started)
        switch result {
        case .success(let receipt):
            ServerMetrics.command(command.op.rawValue, result: "ok")
            return receipt
        case .failure(let error):
            ServerMetrics.command(command.op.rawValue, result: error.code.rawValue)
            throw error
        }
    }

    func snapshot(_ user: UserIdentity) async throws -> (PlayerState, [DeviceInfo]) {
        try await engine.snapshot(user: user)
    }

    /// `If-Match: 42` or `If-Match: "42"`.
    static func ifMatch(_ header: String?) throws(PlaybackError) -> Int64? {
        guard let header else { return nil }
        let trimmed = header.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        guard let version = Int64(trimmed), version >= 0 else { throw .badRequest("If-Match must be a version number") }
        return version
    }

    static func query<T: LosslessStringConvertible>(_ request: Request, _ name: String, as type: T.Type) throws(PlaybackError) -> T {
        guard let value = try optionalQuery(request, name, as: type) else { throw .badRequest("query parameter \(name) is required") }
        return value
    }

    static func optionalQuery<T: LosslessStringConvertible>(_ request: Request, _ name: String, as type: T.Type) throws(PlaybackError) -> T? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let value = T(text) else { throw .badRequest("query parameter \(name) has an invalid value") }
        return value
    }

    static let maxBodyBytes = 64 * 1_024

    static func decode<T: Decodable>(_ type: T.Type, from request: inout Request) async throws -> T {
        guard let value = try await decodeIfPresent(type, from: &request) else { throw PlaybackError.badRequest("a JSON body is required") }
        return value
    }

    static func decodeIfPresent<T: Decodable>(_ type: T.Type, from request: inout Request) async throws -> T? {
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: maxBodyBytes)
        } catch {
            throw PlaybackError.badRequest("the body is larger than \(maxBodyBytes) bytes")
        }
        guard body.readableBytes > 0 else { return nil }
        do {
            return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView))
        } catch {
            throw PlaybackError.badRequest("the body is not the expected JSON")
        }
    }
}

/// A token bucket per user for the REST API (same rate as a WebSocket connection).
final class UserRateLimiter: Sendable {
    private let buckets = Mutex<[String: TokenBucket]>([:])
    let rate: Int
    let burst: Int

    init(rate: Int, burst: Int) {
        self.rate = rate
        self.burst = burst
    }

    /// nil when allowed; otherwise how long to wait.
    func take(_ user: String) -> Int64? {
        let now = ContinuousClock.now
        let nowNs = UInt64(max(0, (now - Self.origin).components.seconds)) * 1_000_000_000
            + UInt64(max(0, (now - Self.origin).components.attoseconds / 1_000_000_000))
        return buckets.withLock { buckets in
            if buckets.count > 100_000 { buckets.removeAll() }  // bounded: forget idle users wholesale
            var bucket = buckets[user] ?? TokenBucket(rate: rate, burst: burst, nowNs: nowNs)
            let decision = bucket.take(nowNs: nowNs)
            buckets[user] = bucket
            return decision.allowed ? nil : decision.retryAfterMs
        }
    }

    private static let origin = ContinuousClock.now
}
