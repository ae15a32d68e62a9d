import Foundation
import NIOCore
import RedisClient

/// The one call of a command: answers a remembered request id; waits while another command has the
/// user's turn; checks that the state is still at the expected version (else returns the current
/// state, so the retry needs no read); then either commits (writes the state, moves or clears the
/// lease, remembers the answer, publishes the change with the stored state appended to the frame)
/// or, for a command that changed nothing, confirms the version and remembers the answer.
///
/// A user remembers at most a capacity of request ids inside the window (`reqs:{u:ID}` lists them by
/// when they leave it): a new id beyond that is refused, never an old one forgotten early.
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
    static let lua = DeadlineLua.functions + """
        local remember = ARGV[2] ~= '0'
        if remember then
          local known = redis.call('GET', KEYS[3])
          if known then return {2, known} end
          local now = now_ms()
          redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
          if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[2]) then
            local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
            return {3, math.max(1, tonumber(oldest[2]) - now)}
          end
        end
        local turn = redis.call('GET', KEYS[5])
        if turn and turn ~= ARGV[5] then return {4, math.max(1, redis.call('PTTL', KEYS[5]))} end
        if ARGV[5] ~= '' and not turn then redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6]) end
        local current = redis.call('HMGET', KEYS[1], 'version', 'state')
        local version = tonumber(current[1] or '0')
        if version ~= tonumber(ARGV[1]) then return {0, version, current[2]} end
        if ARGV[5] ~= '' then redis.call('DEL', KEYS[5]) end
        if ARGV[7] ~= 'commit' then
          if remember then
            redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4])
            lapse_in(KEYS[4], ARGV[4], KEYS[3])
          end
          return {1, version}
        end
        redis.call('HSET', KEYS[1], 'version', ARGV[8], 'epoch', ARGV[9], 'state', ARGV[10])
        if ARGV[11] == 'set' then
          redis.call('SET', KEYS[2], ARGV[12], 'PX', ARGV[13])
          lapse_in(KEYS[6], ARGV[13], ARGV[16])
        elseif ARGV[11] == 'del' then
          redis.call('DEL', KEYS[2])
          if KEYS[6] then redis.call('ZREM', KEYS[6], ARGV[16]) end
        end
        if remember then
          redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
          lapse_in(KEYS[4], ARGV[4], KEYS[3])
        end
        redis.call('PUBLISH', ARGV[14], ARGV[15] .. ARGV[10])
        return {1, tonumber(ARGV[8])}
        """

    // KEYS
    var playback: String
    var lock: String
    /// The request id's key (`req:{u:ID}:-` when the answer is not remembered).
    var request: String
    var requests: String
    var turn: String
    /// `lease-deadlines` on one Redis; nil on a cluster.
    var deadlines: String?

    // ARGV
    var expectedVersion: Int64
    /// The capacity of remembered ids, or 0 when the answer is not remembered.
    var capacity: Int
    var answer: ByteBuffer?
    var answerTTLMs: Int64
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

    init(user: String, _ call: CommandCall, deadlines: String?) {
        let keys = RedisKeys(user: user)
        playback = keys.playback
        lock = keys.lock
        request = keys.request(call.requestID ?? "-")
        requests = keys.requests
        turn = keys.turn
        self.deadlines = deadlines
        expectedVersion = call.expectedVersion
        capacity = call.requestID == nil ? 0 : call.answerCapacity
        answer = call.requestID == nil ? nil : StoredAnswer.json(call.answer)
        answerTTLMs = call.answerTTLMs
        turnToken = call.turn?.token
        turnTTLMs = call.turn?.ttlMs ?? 0
        commit = call.change.map { change in
            Commit(
                version: change.playback.version, epoch: change.playback.epoch, state: change.json, lease: change.lease,
                channel: keys.channel, frameHead: change.frame.encodedHead(storedLength: change.json.readableBytes), user: user)
        }
    }

    var keys: [String] { [playback, lock, request, requests, turn] + (deadlines.map { [$0] } ?? []) }

    var arguments: [RedisArgument] {
        var arguments: [RedisArgument] = [
            .integer(expectedVersion), .integer(Int64(capacity)), answer.map { .bytes($0) } ?? .string(""), .integer(answerTTLMs),
            .string(turnToken ?? ""), .integer(turnTTLMs),
        ]
        guard let commit else {
            arguments.append("confirm")
            return arguments
        }
        let (operation, lock, ttl): (String, String, Int64) =
            switch commit.lease {
            case .keep: ("keep", "", 0)
            case .set(let holder, let ttlMs): ("set", holder, ttlMs)
            case .clear: ("del", "", 0)
            }
        arguments += [
            "commit", .integer(commit.version), .integer(commit.epoch), .bytes(commit.state), .string(operation), .string(lock),
            .integer(ttl), .string(commit.channel), .bytes(commit.frameHead), .string(commit.user),
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
            guard let answer = try? StoredAnswer.decode(stored) else { return .failure(RedisError(.protocolError, "unreadable remembered answer")) }
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
