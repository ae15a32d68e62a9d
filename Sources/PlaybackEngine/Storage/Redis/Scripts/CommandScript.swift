import Foundation
import NIOCore
import RedisClient

/// The one call of a command: answers a remembered request id; waits while another command has the
/// user's turn; checks that the state is still at the expected version (else returns the current
/// state, so the retry needs no read); then either commits (writes the state, moves or clears the
/// lease, remembers the answer, publishes the change with the stored state appended to the frame)
/// or, for a command that changed nothing, confirms the version and remembers the answer.
///
/// A user remembers at most a capacity of request ids inside the window: a new id beyond that is
/// refused, never an old one forgotten early. The answers live in one hash per minute
/// (`reqs:{u:ID}:<n>`, a tenth of the window each: `RequestBuckets`): an id is looked up in the window's minutes, written
/// into the current one, and leaves with its minute, the window after the minute ends. A small hash
/// is a listpack, a few bytes beyond the id and the answer: about 45 bytes per remembered command
/// instead of two keys' worth (docs/redis.md).
///
/// The turn (`turn:{u:ID}`): a command that lost a few rounds to other nodes asks for it with a token
/// of its own; while one holds it, the others wait (reply 4) instead of racing, and the holder
/// retries on the state the conflict reply carried until it commits (or confirms), which ends
/// the turn. It lapses by itself after its TTL, so a node that dies holding it blocks nobody long.
///
/// Returns {1, version} when committed or confirmed, {0, current version, current state or nil} on a
/// conflict, {2, answer} for a known request, {3, ms until an id leaves the window} when the user has
/// as many ids remembered as it may, {4, ms the turn is still held} while another command has it.
struct CommandScript: RedisScriptCall {
    /// KEYS: 1 playback, 2 lock, 3 the id's key of the previous release, 4 turn, 5 devices, 6
    /// presence, 7… the window's minutes (oldest first, the current one last), then the lease
    /// deadlines (one Redis only).
    static let lua = DeadlineLua.functions + """
        local remember = ARGV[2] ~= '0'
        local minutes = tonumber(ARGV[17])
        local current_minute = KEYS[6 + minutes]
        local function remember_answer()
          redis.call('HSETNX', current_minute, ARGV[16], ARGV[3])
          redis.call('PEXPIREAT', current_minute, ARGV[18])
        end
        if remember then
          local known = redis.call('GET', KEYS[3])
          if known then return {2, known} end
          local count = 0
          for i = 7, 6 + minutes do
            local answer = redis.call('HGET', KEYS[i], ARGV[16])
            if answer then return {2, answer} end
            count = count + redis.call('HLEN', KEYS[i])
          end
          if count >= tonumber(ARGV[2]) then
            for i = 7, 6 + minutes do
              local ttl = redis.call('PTTL', KEYS[i])
              if ttl > 0 then return {3, ttl} end
            end
            return {3, 1}
          end
        end
        local turn = redis.call('GET', KEYS[4])
        if turn and turn ~= ARGV[5] then return {4, math.max(1, redis.call('PTTL', KEYS[4]))} end
        if ARGV[5] ~= '' and not turn then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6]) end
        local current = redis.call('HMGET', KEYS[1], 'version', 'state')
        local version = tonumber(current[1] or '0')
        if version ~= tonumber(ARGV[1]) then return {0, version, current[2]} end
        if ARGV[5] ~= '' then redis.call('DEL', KEYS[4]) end
        if ARGV[7] ~= 'commit' then
          if remember then remember_answer() end
          return {1, version}
        end
        local deadlines = KEYS[7 + minutes]
        redis.call('HSET', KEYS[1], 'version', ARGV[8], 'epoch', ARGV[9], 'state', ARGV[10])
        -- A change: the user is not idle (IdleScript may have set the keys to expire).
        redis.call('PERSIST', KEYS[1])
        redis.call('PERSIST', KEYS[5])
        redis.call('PERSIST', KEYS[6])
        if ARGV[11] == 'set' then
          redis.call('SET', KEYS[2], ARGV[12], 'PX', ARGV[13])
          lapse_in(deadlines, ARGV[13], ARGV[15])
        elseif ARGV[11] == 'del' then
          redis.call('DEL', KEYS[2])
          if deadlines then redis.call('ZREM', deadlines, ARGV[15]) end
        end
        if remember then remember_answer() end
        redis.call('PUBLISH', ARGV[14], ARGV[19] .. ARGV[10])
        return {1, tonumber(ARGV[8])}
        """

    // KEYS
    var playback: String
    var lock: String
    /// The request id's key of the previous release (`req:{u:ID}:-` when the answer is not remembered).
    var legacyRequest: String
    var turn: String
    var devices: String
    var online: String
    /// The window's minutes, oldest first; the answer goes into the last.
    var requestMinutes: [String]
    /// `lease-deadlines` on one Redis; nil on a cluster.
    var deadlines: String?

    // ARGV
    var expectedVersion: Int64
    /// The capacity of remembered ids, or 0 when the answer is not remembered.
    var capacity: Int
    var requestID: String
    var answer: ByteBuffer?
    var answerTTLMs: Int64
    /// When the current minute's hash expires (ms since the epoch).
    var currentMinuteExpiresAt: Int64
    var turnToken: String?
    var turnTTLMs: Int64
    var commit: Commit?

    struct Commit {
        var version: Int64
        var epoch: Int64
        var state: ByteBuffer
        var lease: CommandCall.LeaseOperation
        var channel: String
        /// The frame, to which the script appends the stored state.
        var frameHead: ByteBuffer
        var user: String
    }

    init(user: String, _ call: CommandCall, deadlines: String?, nowMs: Int64 = ServerClock.nowMs()) {
        let keys = RedisKeys(user: user)
        playback = keys.playback
        lock = keys.lock
        legacyRequest = keys.legacyRequest(call.requestID ?? "-")
        turn = keys.turn
        devices = keys.devices
        online = keys.online
        let minutes = RequestBuckets(windowMs: call.answerTTLMs, nowMs: nowMs)
        requestMinutes = minutes.buckets.map { keys.requests(bucket: $0) }
        currentMinuteExpiresAt = minutes.currentExpiresAt
        self.deadlines = deadlines
        expectedVersion = call.expectedVersion
        capacity = call.requestID == nil ? 0 : call.answerCapacity
        requestID = call.requestID ?? ""
        answer = call.requestID == nil ? nil : StoredAnswer.compact(call.answer)
        answerTTLMs = call.answerTTLMs
        turnToken = call.turn?.token
        turnTTLMs = call.turn?.ttlMs ?? 0
        commit = call.change.map { change in
            Commit(
                version: change.playback.version, epoch: change.playback.epoch, state: change.json, lease: change.lease,
                channel: keys.channel, frameHead: change.frame.encodedHead(storedLength: change.json.readableBytes), user: user)
        }
    }

    var keys: [String] { [playback, lock, legacyRequest, turn, devices, online] + requestMinutes + (deadlines.map { [$0] } ?? []) }

    var arguments: [RedisArgument] {
        var arguments: [RedisArgument] = [
            .integer(expectedVersion), .integer(Int64(capacity)), answer.map { .bytes($0) } ?? .string(""), .integer(answerTTLMs),
            .string(turnToken ?? ""), .integer(turnTTLMs),
        ]
        let (operation, lock, ttl): (String, String, Int64) =
            switch commit?.lease {
            case .set(let holder, let ttlMs): ("set", holder, ttlMs)
            case .clear: ("del", "", 0)
            case .keep, nil: ("keep", "", 0)
            }
        // ARGV 7-15 (the commit's), then 16-19 (every call's): fixed places whatever the call.
        if let commit {
            arguments += [
                "commit", .integer(commit.version), .integer(commit.epoch), .bytes(commit.state), .string(operation), .string(lock),
                .integer(ttl), .string(commit.channel), .string(commit.user),
            ]
        } else {
            arguments += ["confirm", 0, 0, "", "keep", "", 0, "", ""]
        }
        arguments += [
            .string(requestID), .integer(Int64(requestMinutes.count)), .integer(currentMinuteExpiresAt),
            commit.map { .bytes($0.frameHead) } ?? .string(""),
        ]
        return arguments
    }

    /// The script's reply as a `CommandReply`.
    static func reply(_ reply: RESPValue) -> Result<CommandReply, any Error> {
        guard case .array(let parts) = reply, let status = parts.first?.int else {
            return .failure(RedisError(.protocolError, "unexpected command reply \(reply)"))
        }
        switch (status, parts.count > 1 ? parts[1] : .null) {
        case (1, _):
            return .success(.done)
        case (3, .integer(let retryAfterMs)):
            return .success(.full(retryAfterMs: retryAfterMs))
        case (4, .integer(let heldMs)):
            return .success(.turnHeld(forMs: heldMs))
        case (2, .bulkString(let stored)):
            guard let answer = try? StoredAnswer.read(stored) else { return .failure(RedisError(.protocolError, "unreadable remembered answer")) }
            return .success(.known(answer))
        case (0, _):
            guard parts.count > 2, case .bulkString(let json) = parts[2] else { return .success(.conflict(nil, json: nil)) }
            guard let playback = try? JSONDecoder().decode(Playback.self, from: Data(json.readableBytesView)) else {
                return .failure(RedisError(.protocolError, "unreadable stored playback"))
            }
            return .success(.conflict(playback, json: json))
        default:
            return .failure(RedisError(.protocolError, "unexpected command reply \(reply)"))
        }
    }
}
