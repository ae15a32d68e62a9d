import Logging
import PlaybackEngine
import Tracing

/// What a WebSocket session needs beyond its socket: the engine, token checks, settings.
/// Shared by all sessions; `handle` runs one client message against the engine.
final class SessionServices: Sendable {
    let engine: any PlaybackEngine
    let authenticator: Authenticator
    let configuration: ServerConfiguration
    let logger: Logger
    /// The sessions' heartbeat, one timer per event loop.
    let heartbeats: HeartbeatSweep.Registry

    init(engine: any PlaybackEngine, authenticator: Authenticator, configuration: ServerConfiguration, logger: Logger) {
        self.engine = engine
        self.authenticator = authenticator
        self.configuration = configuration
        self.logger = logger
        self.heartbeats = HeartbeatSweep.Registry(intervalMs: configuration.heartbeatMs)
    }

    var welcome: WelcomeParameters {
        WelcomeParameters(
            heartbeatMs: configuration.heartbeatMs,
            limits: .init(maxMessageBytes: configuration.maxMessageBytes, messagesPerS: configuration.messagesPerSecond))
    }

    /// What the session does once a message was handled.
    enum Outcome: Sendable {
        /// `hello` was accepted; the engine sent `welcome`.
        case connected(device: String)
        /// A reply (or nothing); `malformed` when it was a `bad_request` (counts toward the limit).
        case reply(ServerMessage?, malformed: Bool)
        /// A refreshed token: the session now expires at this time.
        case reauthenticated(expiresAtMs: Int64, reply: ServerMessage?)
        case close(CloseCode, String)
    }

    /// A connected session, as `handle` needs to know it.
    struct Session: Sendable {
        var user: UserIdentity
        var device: String?
        var sink: any DeviceSink

        /// A remote control's session: its commands come from no device (`RemoteControl`).
        var isRemote: Bool { device.map(RemoteControl.isKey) ?? false }
    }

    /// Handles one message and calls `completion` with what the session does next. Commands,
    /// reports and releases go to the engine without a task; the rare rest (hello, auth, history)
    /// runs in one.
    func handle(_ message: ClientMessage, session: Session, completion: @escaping @Sendable (Outcome) -> Void) {
        if session.isRemote, Self.isFromAPlayer(message) {
            // A remote control plays nothing.
            let error = PlaybackError.badRequest("a remote control plays nothing: \(message.type) is for devices")
            completion(.reply(.error(.init(id: message.requestID, error: error)), malformed: true))
            return
        }
        switch message {
        case .command(let request):
            let started = ContinuousClock.now
            submit(.command(request.command), session: session, requestID: request.id, ifVersion: request.ifVersion) { result in
                ServerMetrics.commandDuration.record(ContinuousClock.now - started)
                switch result {
                case .success(let receipt):
                    ServerMetrics.command(request.command.op.rawValue, result: "ok")
                    completion(.reply(.ack(.init(id: request.id, version: receipt.version, entry: receipt.entry)), malformed: false))
                case .failure(let error):
                    ServerMetrics.command(request.command.op.rawValue, result: error.code.rawValue)
                    completion(.reply(.error(.init(id: request.id, error: error)), malformed: error.code == .badRequest))
                }
            }
        case .report(let report):
            let input = Input.report(epoch: report.epoch, positionMs: report.positionMs, isPlaying: report.isPlaying, trackID: report.trackID)
            submit(input, session: session) { completion(Self.silentUnlessFailed($0, id: report.id)) }
        case .trackEnded(let ended):
            submit(.trackEnded(epoch: ended.epoch, trackID: ended.trackID), session: session) {
                completion(Self.silentUnlessFailed($0, id: ended.id))
            }
        case .release(let id):
            submit(.release, session: session) { result in
                switch result {
                case .success(let receipt):
                    completion(.reply(id.map { .ack(.init(id: $0, version: receipt.version)) }, malformed: false))
                case .failure(let error):
                    completion(.reply(.error(.init(id: id, error: error)), malformed: error.code == .badRequest))
                }
            }
        case .hello, .auth, .clock, .history:
            let started = engine.perform { completion(await self.handleRare(message, session: session)) }
            if !started {
                let hint = Int64.random(in: 0...configuration.effectiveDrainWindowMs)
                completion(.close(.goingAway, Reconnecting.closeReason("server shutting down", retryAfterMs: hint)))
            }
        }
    }

    /// Messages that come once or seldom per session.
    private func handleRare(_ message: ClientMessage, session: Session) async -> Outcome {
        switch message {
        case .hello(let hello):
            do {
                try await engine.connect(user: session.user, hello: hello, sink: session.sink, welcome: welcome)
                ServerMetrics.sessions.increment()
                return .connected(device: hello.isRemote ? RemoteControl.key(hello.device.id) : hello.device.id)
            } catch {
                return .close(error.code, error.reason)
            }
        case .command, .report, .trackEnded, .release:
            preconditionFailure("\(message.type) is handled without a task by handle(_:session:completion:)")
        case .auth(let token, let id):
            do {
                let access = try await authenticator.verify(token: token)
                guard access.identity.userID == session.user.userID else {
                    return .close(.policyViolation, "the new token is for another user")
                }
                let version = (try? await engine.snapshot(user: session.user).state.version) ?? 0
                return .reauthenticated(expiresAtMs: access.expiresAtMs, reply: id.map { .ack(.init(id: $0, version: version)) })
            } catch {
                return .close(.policyViolation, error.message)
            }
        case .clock(let t0):
            // SessionHandler answers clock on the event loop (no engine involved, the timestamp
            // as late as possible); this is the same answer for a caller that hands it over.
            return .reply(.clock(t0: t0, serverTime: ServerClock.nowMs()), malformed: false)
        case .history(let id, let limit):
            do {
                let items = try await engine.recentlyPlayed(user: session.user, limit: limit)
                return .reply(.history(.init(id: id, items: items)), malformed: false)
            } catch {
                return .reply(.error(.init(id: id, error: error)), malformed: false)
            }
        }
    }

    private func submit(
        _ input: Input, session: Session, requestID: String? = nil, ifVersion: Int64? = nil,
        completion: @escaping @Sendable (Result<Receipt, PlaybackError>) -> Void
    ) {
        var submission = Submission(
            user: session.user, input: input, device: session.isRemote ? nil : session.device, requestID: requestID, ifVersion: ifVersion)
        guard CommandTracing.isEnabled, CommandTracing.keepsRoot() else {
            engine.submit(submission, completion: completion)
            return
        }
        // A trace starts at the WebSocket message (REST requests start theirs in TracingMiddleware).
        guard let span = CommandTracing.span("ws \(input.causeOp)", under: .topLevel, kind: .server) else {
            engine.submit(submission, completion: completion)
            return
        }
        span.attributes["playback.user"] = session.user.userID
        span.attributes["playback.device"] = session.device
        if let requestID { span.attributes["playback.request"] = requestID }
        submission.traceContext = span.context
        engine.submit(submission) { result in
            span.end(with: result)
            completion(result)
        }
    }

    /// What only a device that plays can say.
    private static func isFromAPlayer(_ message: ClientMessage) -> Bool {
        switch message {
        case .report, .trackEnded, .release: true
        default: false
        }
    }

    private static func silentUnlessFailed(_ result: Result<Receipt, PlaybackError>, id: String?) -> Outcome {
        guard case .failure(let error) = result else { return .reply(nil, malformed: false) }
        return .reply(.error(.init(id: id, error: error)), malformed: error.code == .badRequest)
    }
}
