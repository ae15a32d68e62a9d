import Foundation
import PlaybackCore
import Synchronization

extension Swarm {
    /// One device of the swarm: its connection (re-opened on the next server after a loss when
    /// `reconnect` is set, with `last_seen`) and everything it saw.
    final class Device: Sendable {
        struct State {
            var events: [DeviceEvent] = []
            var connection: DeviceConnection?
            var server: Int
            var lastState: PlayerState?
            var lease = LeaseBelief()
            var welcomedNs: UInt64?
            var closed = false
            var stopping = false
            /// Acks and errors received (answers to commands, counted to know when they stop coming).
            var answers = 0
            /// Answers to the final commands (`final-…`), which the run waits for longer.
            var finalAnswers = 0
            /// The final commands this device sent, by id: sent again after an `unavailable`
            /// refusal's `retry_after_ms`, as a client does (the run must end with each acked).
            var finals: [String: ClientMessage] = [:]
            /// Come back after a loss (set once the load starts).
            var reconnects = false
            /// When the last close said to come back (`retry_after_ms`).
            var retryHintMs: Int64?
        }

        let userName: String
        let device: String
        let token: String
        let servers: [ServerAddress]
        let source: String?
        let light: Bool
        let confirmStarts: Bool
        let state: Mutex<State>

        init(
            userName: String, device: String, token: String, servers: [ServerAddress], first server: Int, source: String?,
            light: Bool = false, confirmStarts: Bool = false
        ) {
            self.light = light
            self.confirmStarts = confirmStarts
            self.userName = userName
            self.device = device
            self.token = token
            self.servers = servers
            self.source = source
            self.state = Mutex(State(server: server))
        }

        func record(_ event: ConnectionEvent) {
            state.withLock { state in
                switch event {
                case .message(let message, let ns):
                    state.lease.observe(message)
                    switch message {
                    case .welcome(let welcome):
                        state.lastState = welcome.state
                        if state.welcomedNs == nil { state.welcomedNs = ns }
                    case .state(let event):
                        guard event.state.version > (state.lastState?.version ?? -1) else { break }
                        var next = event.state
                        if next.queue == nil { next.queue = state.lastState?.queue }
                        state.lastState = next
                    case .ack(let ack):
                        state.answers += 1
                        if ack.id.hasPrefix("final-") { state.finalAnswers += 1 }
                    case .error(let error):
                        state.answers += 1
                        if let id = error.id, let final = state.finals[id] {
                            if error.code == .unavailable {
                                let wait = max(50, min(error.retryAfterMs ?? 200, 2_000))
                                Task {
                                    try? await Task.sleep(for: .milliseconds(wait))
                                    _ = self.send(final)
                                }
                            } else {
                                state.finalAnswers += 1
                            }
                        }
                    case .leaseGranted(let grant):
                        // A start to confirm: a report that plays at the new epoch, at once.
                        if grant.confirmBy != nil, state.lease.active, state.lease.epoch == grant.epoch, let track = grant.state.track {
                            state.connection?.sendNow(.report(.init(
                                epoch: grant.epoch, positionMs: grant.state.positionMs, isPlaying: true, trackID: track.id)))
                        }
                    case .leaseRevoked: break
                    default: return
                    }
                    state.events.append(.received(message, ns: ns))
                case .summary(let summary, let ns):
                    switch summary.type {
                    case "welcome": if state.welcomedNs == nil { state.welcomedNs = ns }
                    case "ack", "error": state.answers += 1
                    case "state", "lease_granted", "lease_revoked": break
                    default: return
                    }
                    state.events.append(.summary(summary, ns: ns))
                case .pinged(let ns): state.events.append(.pinged(ns: ns))
                case .closed(let code, let reason):
                    state.events.append(.closed(code: code, ns: DispatchTime.now().uptimeNanoseconds))
                    state.retryHintMs = Reconnecting.retryAfterMs(inCloseReason: reason)
                    state.connection = nil
                    state.closed = true
                    if state.reconnects, !state.stopping { Task { await self.reconnect() } }
                case .undecodable, .compressed: break
                }
            }
        }

        var connectionOptions: DeviceConnection.Options {
            var options = DeviceConnection.Options(sourceAddress: source)
            options.summariesOnly = light
            return options
        }

        /// Connects to the current server and says hello (with `last_seen` after the first time).
        func connect() async throws -> DeviceConnection {
            let (server, lastSeen) = state.withLock { state in
                (state.server % servers.count, state.lastState.map { ClientMessage.Hello.LastSeen(epoch: $0.epoch, version: $0.version) })
            }
            let connection = try await DeviceConnection.connect(
                to: servers[server], token: token, options: connectionOptions
            ) { [self] event in record(event) }
            let stopping = state.withLock { state in
                state.events.append(.connected(server: server, ns: DispatchTime.now().uptimeNanoseconds))
                state.connection = connection
                state.closed = false
                return state.stopping
            }
            if stopping {
                await connection.close()
                return connection
            }
            connection.sendNow(.hello(.init(
                device: .init(id: device, name: "Swarm \(device)", kind: .other), lastSeen: lastSeen,
                capabilities: confirmStarts ? [Capability.transferConfirm] : nil)))
            return connection
        }

        /// After a loss: the next server, after a pause (full jitter, short as a load generator
        /// wants, never sooner than the server's hint), until connected or stopped.
        func reconnect() async {
            var attempt = 0
            while !state.withLock({ $0.stopping }) {
                attempt += 1
                let hint = state.withLock { state in
                    defer { state.retryHintMs = nil }
                    return state.retryHintMs
                }
                let delay = Reconnecting.delayMs(attempt: attempt, hintMs: hint, baseMs: 100, capMs: 3_000, random: Double.random(in: 0...1))
                try? await Task.sleep(for: .milliseconds(delay))
                state.withLock { $0.server += 1 }
                if (try? await connect()) != nil { return }
            }
        }

        /// Sends when connected; false when the device is between connections.
        func send(_ message: ClientMessage) -> Bool {
            guard let connection = state.withLock({ $0.connection }) else { return false }
            connection.sendNow(message)
            return true
        }

        /// A progress report when the device believes it holds the lease and is playing.
        func reportIfActive(nowMs: Int64) {
            let report: ClientMessage? = state.withLock { state in
                guard state.lease.active, let current = state.lastState, current.isPlaying, let track = current.track else { return nil }
                return .report(.init(epoch: state.lease.epoch, positionMs: current.position(at: nowMs), isPlaying: true, trackID: track.id))
            }
            if let report { _ = send(report) }
        }

        func stop() async {
            let connection = state.withLock { state in
                state.stopping = true
                return state.connection
            }
            await connection?.close()
        }

        var history: DeviceHistory { DeviceHistory(user: userName, device: device, events: state.withLock { $0.events }) }
    }
}
