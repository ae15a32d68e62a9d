import Foundation
import Logging
import NIOCore
import PlaybackCore

/// A simulated device: it holds a connection to the daemon, plays in simulated time while it
/// holds the lease (reports progress with its epoch, sends `track_ended` at the end), stops at
/// once when revoked, starts at the granted position, keeps a clock offset from `clock`
/// exchanges, and reconnects with backoff and jitter, re-helloing with `last_seen`.
public actor SimulatedDevice {
    /// Who the device says it is in `hello`.
    public typealias Identity = ClientMessage.Hello.Device

    public struct Options: Sendable {
        public var server: ServerAddress
        /// Mints a token for each (re)connection.
        public var token: @Sendable () async throws -> String
        public var reportIntervalMs: Int64 = 5_000
        public var tickMs: Int64 = 250
        public var maxBackoffMs: Int64 = 10_000
        public var answerTimeout: Duration = .seconds(10)
        /// Reconnect after a lost or failed connection (one-shot commands do not).
        public var reconnect = true
        /// How to connect (TLS settings for wss://, source address).
        public var connection = DeviceConnection.Options()
        /// Declared in `hello`: with `transfer_confirm` the device confirms each start after a
        /// transfer (its first report, sent at once).
        public var capabilities: [String] = [Capability.transferConfirm]
        /// A broken target: it takes a transfer that asks for confirmation but never starts (no
        /// report), so the daemon hands playback back.
        public var failStart = false
        /// Connect as a remote control (`hello` with `role: remote`): never listed, never active.
        public var remote = false

        public init(server: ServerAddress, token: @escaping @Sendable () async throws -> String) {
            self.server = server
            self.token = token
        }
    }

    /// What the device tells its user.
    public enum Output: Sendable {
        case received(ServerMessage)
        case connection(String)
        case stopped(String)
    }

    public nonisolated let identity: Identity
    nonisolated let options: Options
    private let output: AsyncStream<Output>.Continuation
    public nonisolated let outputs: AsyncStream<Output>
    private var connection: DeviceConnection?
    public private(set) var state: PlayerState?
    public private(set) var devices: [DeviceInfo] = []
    /// What this device believes: the highest lease epoch seen and whether it holds the lease there.
    public private(set) var leaseEpoch: Int64 = 0
    public private(set) var isActive = false
    /// Server time minus local time, from the best `clock` exchange.
    public private(set) var clockOffsetMs: Double = 0
    private var bestRoundTripMs = Double.infinity
    private var counter = 0
    private var waiting: [String: CheckedContinuation<ServerMessage?, Never>] = [:]
    private var lastReportAt: Int64 = 0
    private var endedVersion: Int64 = -1
    private var stopping = false
    private var connected: CheckedContinuation<Void, Never>?
    /// Set while simulating a start that failed (`failStart`): silent until the lease moves on.
    private var stalled = false

    public init(identity: Identity, options: Options) {
        self.identity = identity
        self.options = options
        (outputs, output) = AsyncStream.makeStream(bufferingPolicy: .unbounded)
    }

    // MARK: Running

    /// Connects, then keeps the device alive (reconnecting) until `stop()`.
    public func run() async {
        var attempt = 0
        var generator = SystemRandomNumberGenerator()
        while !stopping {
            do {
                let events = try await connectOnce()
                attempt = 0
                await serve(events)
            } catch {
                lastConnectError = "\(error)"
                output.yield(.connection("connection failed: \(error)"))
            }
            guard !stopping, options.reconnect else { break }
            attempt += 1
            // Exponential backoff with full jitter, never sooner than the server asked (PROTOCOL.md §9).
            let delay = Reconnecting.delayMs(
                attempt: attempt, hintMs: retryHintMs, capMs: options.maxBackoffMs, random: Double.random(in: 0...1, using: &generator))
            retryHintMs = nil
            output.yield(.connection("reconnecting in \(delay) ms"))
            try? await Task.sleep(for: .milliseconds(delay))
        }
        output.finish()
        resumeWaiter()
    }

    /// When the server said to come back, from the last close (`retry_after_ms`).
    private var retryHintMs: Int64?

    /// Why the last attempt to connect failed, if it did.
    public private(set) var lastConnectError: String?

    /// Waits until the first `welcome` arrived; false when it did not within `timeout` or the device gave up.
    public func waitUntilConnected(timeout: Duration) async -> Bool {
        if state != nil { return true }
        let device = self
        let timer = Task {
            try? await Task.sleep(for: timeout)
            await device.resumeWaiter()
        }
        await withCheckedContinuation { connected = $0 }
        timer.cancel()
        return state != nil
    }

    private func resumeWaiter() {
        connected?.resume()
        connected = nil
    }

    /// Closes cleanly (1000: the lease is released at once) and stops reconnecting.
    public func stop() async {
        stopping = true
        await connection?.close(code: CloseCode.normal.rawValue)
    }

    private func connectOnce() async throws -> AsyncStream<ConnectionEvent> {
        let token = try await options.token()
        // One ordered stream per connection: events are handled in the order they arrived.
        let (events, sink) = AsyncStream.makeStream(of: ConnectionEvent.self, bufferingPolicy: .unbounded)
        let connection = try await DeviceConnection.connect(to: options.server, token: token, options: options.connection) { event in
            sink.yield(event)
            if case .closed = event { sink.finish() }
        }
        self.connection = connection
        output.yield(.connection("connected to \(options.server.host):\(options.server.port)"))
        let lastSeen = state.map { ClientMessage.Hello.LastSeen(epoch: $0.epoch, version: $0.version) }
        try await connection.send(.hello(.init(
            device: identity, lastSeen: lastSeen, capabilities: options.capabilities.isEmpty || options.remote ? nil : options.capabilities,
            role: options.remote ? .remote : nil)))
        for _ in 0..<3 { try await connection.send(.clock(t0: .double(Self.localNowMs()))) }
        return events
    }

    /// Handles the connection's events in order while the playback clock ticks, until it ends.
    private func serve(_ events: AsyncStream<ConnectionEvent>) async {
        let device = self
        let ticker = Task {
            while !Task.isCancelled {
                await device.tick()
                try? await Task.sleep(for: .milliseconds(device.options.tickMs))
            }
        }
        for await event in events { handle(event) }
        ticker.cancel()
    }

    // MARK: Commands

    /// Sends a command and waits for its ack or error (nil when no answer came in time).
    public func command(_ command: Command, ifVersion: Int64? = nil) async -> ServerMessage? {
        await request { id in .command(.init(id: id, command: command, ifVersion: ifVersion)) }
    }

    /// Asks for recently played tracks; the answer is `history` or `error` (nil when none came in time).
    public func history(limit: Int = PlayedItem.defaultLimit) async -> ServerMessage? {
        await request { id in .history(id: id, limit: limit) }
    }

    /// Sends a message with a fresh request id and waits for the answer carrying that id.
    private func request(_ message: (String) -> ClientMessage) async -> ServerMessage? {
        counter += 1
        let id = "\(identity.id)-\(counter)-\(UInt32.random(in: 0...UInt32.max))"
        guard let connection else { return nil }
        let request = message(id)
        let timeout = options.answerTimeout
        let device = self
        let timer = Task {
            try? await Task.sleep(for: timeout)
            await device.answer(id, with: nil)
        }
        defer { timer.cancel() }
        // The waiter is in place before the message leaves: the answer may come back (and be
        // handled on this actor) before the write's own completion is heard of.
        return await withCheckedContinuation { continuation in
            waiting[id] = continuation
            Task {
                do {
                    try await connection.send(request)
                } catch {
                    await device.answer(id, with: nil)
                }
            }
        }
    }

    private func answer(_ id: String, with message: ServerMessage?) {
        waiting.removeValue(forKey: id)?.resume(returning: message)
    }

    /// The position now, from the last state and the clock offset.
    public func position() -> Int64? {
        guard let state, state.track != nil else { return nil }
        return state.position(at: serverNowMs())
    }

    // MARK: Events

    private func handle(_ event: ConnectionEvent) {
        switch event {
        case .message(let message, _):
            receive(message)
            output.yield(.received(message))
        case .closed(let code, let reason):
            connection = nil
            retryHintMs = Reconnecting.retryAfterMs(inCloseReason: reason)
            if isActive { isActive = false }
            let described = code.map { "closed by the server: \($0) \(reason)" } ?? "connection lost"
            output.yield(.connection(described))
            if code == CloseCode.replaced.rawValue {
                stopping = true
                output.yield(.stopped("another connection with device id \(identity.id) replaced this one"))
            }
        case .compressed:
            output.yield(.connection("a compressed message arrived, but this client never offers compression"))
        case .undecodable(let text):
            output.yield(.connection("unknown message from the server: \(text.prefix(200))"))
        case .pinged, .summary:
            break
        }
    }

    private func receive(_ message: ServerMessage) {
        switch message {
        case .welcome(let welcome):
            state = welcome.state
            devices = welcome.devices
            leaseEpoch = max(leaseEpoch, welcome.state.epoch)
            isActive = welcome.state.activeDevice == identity.id
            resumeWaiter()
        case .state(let event):
            guard event.state.version > (state?.version ?? -1) else { return }
            var next = event.state
            if next.queue == nil { next.queue = state?.queue }
            state = next
        case .leaseGranted(let grant) where grant.epoch >= leaseEpoch:
            leaseEpoch = grant.epoch
            isActive = true
            if grant.state.version >= (state?.version ?? -1) { state = grant.state }
            // The first report, at once, confirms the start when the grant asks for it.
            lastReportAt = 0
            stalled = options.failStart && grant.confirmBy != nil
            if stalled { output.yield(.connection("simulating a failed start: not confirming (--fail-start)")) }
        case .leaseRevoked(let revoked) where revoked.epoch >= leaseEpoch:
            leaseEpoch = revoked.epoch
            isActive = false
            stalled = false
        case .devices(let list):
            devices = list
        case .clock(let t0, let serverTime):
            let now = Self.localNowMs()
            let roundTrip = now - t0.doubleValue
            if roundTrip < bestRoundTripMs {
                bestRoundTripMs = roundTrip
                clockOffsetMs = Double(serverTime) - (t0.doubleValue + now) / 2
            }
        case .ack(let ack):
            answer(ack.id, with: message)
        case .history(let history):
            if let id = history.id { answer(id, with: message) }
        case .error(let error):
            if let id = error.id { answer(id, with: message) }
        default:
            break
        }
    }

    /// While active and playing: report periodically, and say when the track ended.
    private func tick() {
        guard isActive, !stalled, let state, let track = state.track, state.isPlaying, let connection else { return }
        let now = serverNowMs()
        let position = state.position(at: now)
        if position >= track.durationMs {
            guard endedVersion != state.version else { return }
            endedVersion = state.version
            connection.sendNow(.trackEnded(.init(epoch: leaseEpoch, trackID: track.id)))
        } else if now - lastReportAt >= options.reportIntervalMs {
            lastReportAt = now
            connection.sendNow(.report(.init(epoch: leaseEpoch, positionMs: position, isPlaying: true, trackID: track.id)))
        }
    }

    private func serverNowMs() -> Int64 { Int64(Self.localNowMs() + clockOffsetMs) }

    static func localNowMs() -> Double { Date().timeIntervalSince1970 * 1_000 }
}
