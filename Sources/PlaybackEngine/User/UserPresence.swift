/// Keeps one user's devices on this node present in the storage: who they are (to write them
/// again if the storage loses them), their presence refreshed every third of its TTL, and what the
/// storage says about who is online. Like `LeaseKeeper`, it knows the storage and nothing of the
/// engine, and runs on the user's event loop.
final class UserPresence<Storage: PlaybackStorage> {
    private let user: String
    private let storage: Storage
    private let timing: LeaseTiming
    private let nodeID: String
    private var local = Local()

    private struct Local {
        /// Who this node's connected devices of the user are (their `hello`).
        var identities: [String: ClientMessage.Hello] = [:]
        /// The round trips last written to the directory (device → ms).
        var writtenRoundTrips: [String: Int] = [:]
        /// When the presence of the local devices was last refreshed (server ms).
        var refreshedAt: Int64?
    }


    init(user: String, storage: Storage, timing: LeaseTiming, nodeID: String) {
        self.user = user
        self.storage = storage
        self.timing = timing
        self.nodeID = nodeID
    }

    /// Until when a device joining now is present.
    func presenceUntil(now: Int64) -> Int64 { now + timing.presenceTTLMs }

    /// The directory entry of a device connected to this node (`session`), or gone (nil).
    func entry(of hello: ClientMessage.Hello, session: String?, rttMs: Int? = nil, now: Int64) -> StoredDevice {
        let capabilities = hello.knownCapabilities
        return StoredDevice(
            name: hello.device.name, kind: hello.device.kind, lastSeen: now, session: session, node: session == nil ? nil : nodeID,
            capabilities: capabilities.isEmpty ? nil : capabilities, rttMs: session == nil ? nil : rttMs)
    }

    func connected(_ hello: ClientMessage.Hello) {
        local.identities[hello.device.id] = hello
        local.writtenRoundTrips[hello.device.id] = nil
    }

    /// Who a device that is leaving was; forgotten unless it is still connected here (`stillHere`).
    func leaving(_ device: String, stillHere: Bool) -> ClientMessage.Hello? {
        let identity = local.identities[device]
        if !stillHere {
            local.identities[device] = nil
            local.writtenRoundTrips[device] = nil
        }
        return identity
    }

    /// Writes the round trips of this node's connected devices (`sessions`: device → session) into
    /// their directory entries where they moved noticeably since last written (by 2 ms and a
    /// fifth); answers the ones written. Called with the presence refresh, so at most every few seconds.
    nonisolated(nonsending) func writeRoundTrips(_ rtts: [String: Int], sessions: [String: String], now: Int64) async throws -> [String: Int] {
        let due = rtts.compactMap { device, rtt -> (device: String, session: String, entry: StoredDevice, rtt: Int)? in
            guard let identity = local.identities[device], let session = sessions[device] else { return nil }
            if let written = local.writtenRoundTrips[device], abs(written - rtt) < max(2, written / 5) { return nil }
            return (device, session, entry(of: identity, session: session, rttMs: rtt, now: now), rtt)
        }
        guard !due.isEmpty else { return [:] }
        try await storage.rewrite(user: user, entries: due.map { ($0.device, $0.session, $0.entry) })
        let written = Dictionary(due.map { ($0.device, $0.rtt) }, uniquingKeysWith: { $1 })
        for (device, rtt) in written where local.identities[device] != nil { local.writtenRoundTrips[device] = rtt }
        return written
    }

    /// Extends the presence of `devices` (this node's, connected, with their sessions) if a third of
    /// its TTL has passed since the last time; nil when it was not due.
    nonisolated(nonsending) func refreshIfDue(_ devices: [(device: String, session: String)], now: Int64) async throws -> PresenceCheck? {
        guard !devices.isEmpty, local.refreshedAt.map({ now - $0 >= timing.presenceTTLMs / 3 }) ?? true else { return nil }
        local.refreshedAt = now
        let (missing, online) = try await storage.refreshPresence(user: user, devices: devices, now: now, until: presenceUntil(now: now))
        return missing > 0 ? .lost : .online(online)
    }

    /// Writes the entries and presence of this node's connected devices (`sessions`: device →
    /// session) again, after the storage lost them.
    nonisolated(nonsending) func register(_ sessions: [(device: String, session: String)], now: Int64) async throws {
        let (identities, written) = (local.identities, local.writtenRoundTrips)
        let entries = sessions.compactMap { device, session -> (device: String, entry: StoredDevice)? in
            guard let identity = identities[device] else { return nil }
            return (device, entry(of: identity, session: session, rttMs: written[device], now: now))
        }
        try await storage.register(user: user, entries: entries, presenceUntil: presenceUntil(now: now))
    }
}

/// What a refresh found.
enum PresenceCheck: Equatable {
    /// The storage lost the user's keys (a local device was missing from the online set).
    case lost
    /// Who is online now.
    case online(Set<String>)
}
