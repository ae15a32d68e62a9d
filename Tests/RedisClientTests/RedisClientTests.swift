import Foundation
import Logging
import NIOCore
import Synchronization
import Testing

@testable import RedisClient

/// The redis-server that scripts/test starts (PLAYBACK_REDIS_URL).
enum TestRedis {
    static let url = ProcessInfo.processInfo.environment["PLAYBACK_REDIS_URL"]
    /// The tests check answers, not speed: a loaded machine may take seconds for 10,000
    /// pipelined commands or an 8 MB reply, so the command timeout is generous here.
    static var configuration: RedisConfiguration {
        get throws {
            var configuration = try RedisConfiguration(url: url ?? "redis://127.0.0.1:6390/0")
            configuration.commandTimeoutMs = 20_000
            return configuration
        }
    }

    static func key(_ name: String) -> String { "test:\(name):\(UInt32.random(in: 0...UInt32.max))" }

    /// A configuration whose connections carry a unique client name.
    static func named(_ name: String) throws -> RedisConfiguration {
        var configuration = try configuration
        configuration.clientName = key(name).replacingOccurrences(of: ":", with: "-")
        return configuration
    }

    /// Kills exactly the connections with this client name (other tests run in parallel).
    /// Looks for the name for up to two seconds (a loaded machine may not have listed it yet).
    static func kill(clientNamed name: String, using admin: RedisClient) async throws -> Int {
        for _ in 0..<40 {
            let list = try await admin.send(["CLIENT", "LIST"]).string ?? ""
            var killed = 0
            for line in list.split(separator: "\n") where line.contains(" name=\(name) ") {
                guard let id = line.split(separator: " ").first(where: { $0.hasPrefix("id=") })?.dropFirst(3) else { continue }
                killed += Int(try await admin.send(["CLIENT", "KILL", "ID", .string(String(id))]).int ?? 0)
            }
            if killed > 0 { return killed }
            try await Task.sleep(for: .milliseconds(50))
        }
        return 0
    }
}

@Suite("RedisClient against a real redis-server", .enabled(if: TestRedis.url != nil || ProcessInfo.processInfo.environment["CI"] == "true", "needs PLAYBACK_REDIS_URL (scripts/test sets it)"))
struct RedisClientTests {
    @Test func tenThousandPipelinedCommandsAreAnsweredInOrder() async throws {
        let client = RedisClient(configuration: try TestRedis.configuration)
        let key = TestRedis.key("counter")
        let replies = try await withThrowingTaskGroup(of: Int64.self) { group in
            for _ in 0..<10_000 { group.addTask { try await client.send(["INCR", .string(key)]).int ?? -1 } }
            var all: [Int64] = []
            for try await reply in group { all.append(reply) }
            return all
        }
        #expect(Set(replies) == Set(1...10_000), "every INCR got its own reply")
        #expect(try await client.send(["GET", .string(key)]).int == 10_000)
        _ = try await client.send(["DEL", .string(key)])
        await client.shutdown()
    }

    /// A script's SHA is computed here, not asked of Redis: it must be the name Redis gives it.
    @Test(arguments: ["", "return 1", "return redis.call('GET', KEYS[1]) -- é", "return '" + String(repeating: "x", count: 1_000) + "'"])
    func aScriptsSHAIsTheOneRedisGivesIt(source: String) async throws {
        let client = RedisClient(configuration: try TestRedis.configuration)
        let loaded = try await client.send(["SCRIPT", "LOAD", .string(source)]).string
        #expect(RedisScript(source).sha == loaded)
        await client.shutdown()
    }

    @Test func sha1MatchesTheStandardsVectors() {
        #expect(SHA1.hex(Array("abc".utf8)) == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(SHA1.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)) == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        #expect(SHA1.hex([]) == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
    }

    @Test func errorRepliesThrowWithTheServersMessage() async throws {
        let client = RedisClient(configuration: try TestRedis.configuration)
        let key = TestRedis.key("string")
        _ = try await client.send(["SET", .string(key), "text"])
        await #expect {
            _ = try await client.send(["INCR", .string(key)])
        } throws: { error in
            (error as? RedisError)?.code == .server && "\(error)".contains("not an integer")
        }
        #expect(try await client.send(["GET", .string(key)]).string == "text", "the connection is still usable")
        await client.shutdown()
    }

    @Test func hugeBulkStringsAndNestedArraysRoundTrip() async throws {
        let client = RedisClient(configuration: try TestRedis.configuration)
        let key = TestRedis.key("huge")
        let huge = ByteBuffer(bytes: (0..<8_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        _ = try await client.send(["SET", .string(key), .bytes(huge), "PX", 60_000])
        #expect(try await client.send(["GET", .string(key)]) == .bulkString(huge))
        let nested = try await client.evaluate(RedisScript("return {1, {'a', {2, {}}}, 'b'}"), keys: [], arguments: [])
        #expect(nested == .array([.integer(1), .array([.bulkString(ByteBuffer(string: "a")), .array([.integer(2), .array([])])]), .bulkString(ByteBuffer(string: "b"))]))
        await client.shutdown()
    }

    @Test func scriptsSurviveAFlushOfTheScriptCache() async throws {
        let client = RedisClient(configuration: try TestRedis.configuration)
        let script = RedisScript("return tonumber(ARGV[1]) * 2")
        #expect(try await client.evaluate(script, keys: [], arguments: [21]).int == 42)
        _ = try await client.send(["SCRIPT", "FLUSH"])
        #expect(try await client.evaluate(script, keys: [], arguments: [4]).int == 8, "NOSCRIPT → load again → run")
        await client.shutdown()
    }

    @Test func aKilledConnectionFailsPendingCommandsAndTheClientReconnects() async throws {
        let victim = try TestRedis.named("victim")  // its command timeout outlasts the BLPOP below
        let client = RedisClient(configuration: victim)
        let admin = RedisClient(configuration: try TestRedis.configuration)
        _ = try await client.send(["PING"])
        let list = TestRedis.key("blocked")
        // A blocking command keeps the pipeline busy; everything behind it is pending when the kill arrives.
        let pending = (0..<20).map { index in
            Task { try await client.send(index == 0 ? ["BLPOP", .string(list), 5] : ["PING"]) }
        }
        try await Task.sleep(for: .milliseconds(200))
        let killed = try await TestRedis.kill(clientNamed: victim.clientName ?? "", using: admin)
        #expect(killed >= 1, "killed \(killed) connections named \(victim.clientName ?? "")")
        var failed = 0
        for task in pending {
            do { _ = try await task.value } catch let error as RedisError {
                #expect(error.code == .connectionClosed)
                failed += 1
            }
        }
        #expect(failed == 20, "every pending command failed cleanly")
        #expect(try await client.send(["PING"]) == .simpleString("PONG"), "and the client reconnected")
        await client.shutdown()
        await admin.shutdown()
    }

    @Test func pubSubDeliversAndResubscribesAfterAKill() async throws {
        let received = Mutex<[String]>([])
        let resubscribed = Mutex(0)
        let subscriberConfiguration = try TestRedis.named("subscriber")
        let subscriber = RedisSubscriber(configuration: subscriberConfiguration, onResubscribed: { _ in resubscribed.withLock { $0 += 1 } }) { channel, payload in
            received.withLock { $0.append("\(channel)=\(String(buffer: payload))") }
        }
        let channel = TestRedis.key("channel")
        try await subscriber.subscribe(channel)
        let running = Task { await subscriber.run() }
        #expect(await subscriber.waitUntilConnected(timeout: .seconds(30)), "subscribed")
        let publisher = RedisClient(configuration: try TestRedis.configuration)
        #expect(try await publisher.send(["PUBLISH", .string(channel), "one"]).int == 1)
        #expect(try await TestRedis.kill(clientNamed: subscriberConfiguration.clientName ?? "", using: publisher) == 1)
        var delivered = false
        for _ in 0..<200 {
            if try await publisher.send(["PUBLISH", .string(channel), "two"]).int == 1 {
                delivered = true
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(delivered, "the subscription came back after the kill")
        // Delivered to Redis's subscriber; here once the loop gets to it (seconds on a loaded machine).
        for _ in 0..<100 where !(received.withLock { $0.contains("\(channel)=two") } && resubscribed.withLock { $0 } >= 2) {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(received.withLock { $0.first } == "\(channel)=one")
        #expect(received.withLock { $0.contains("\(channel)=two") })
        #expect(resubscribed.withLock { $0 } >= 2)
        await subscriber.stop()
        running.cancel()
        await publisher.shutdown()
    }

    @Test func aCommandWithoutAReplyInTimeFailsAsTimeout() async throws {
        var configuration = try TestRedis.configuration
        configuration.commandTimeoutMs = 300
        let connection = try await RedisConnection.connect(configuration)
        await #expect {
            _ = try await connection.send(["BLPOP", .string(TestRedis.key("empty")), 5])
        } throws: { error in
            (error as? RedisError)?.code == .timeout
        }
        // Closed by the handler on its loop right after failing the command.
        for _ in 0..<40 where connection.isActive { try await Task.sleep(for: .milliseconds(50)) }
        #expect(!connection.isActive, "the replies can no longer be matched: the connection is closed")
    }

    @Test func aCommandOnAClosedConnectionFailsInsteadOfWaiting() async throws {
        let connection = try await RedisConnection.connect(try TestRedis.configuration)
        await connection.close()
        // Before the write could fail, such a command waited forever: nothing completed its reply.
        // It runs unstructured so that the test fails instead of waiting with it.
        let outcome = Mutex<String?>(nil)
        Task {
            let result: String
            do {
                _ = try await connection.send(["PING"])
                result = "answered"
            } catch let error as RedisError {
                result = error.code.rawValue
            } catch {
                result = "\(error)"
            }
            outcome.withLock { $0 = result }
        }
        for _ in 0..<200 where outcome.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(50)) }
        #expect(outcome.withLock { $0 } == RedisError.Code.connectionClosed.rawValue)
    }

    @Test func anUnreachableRedisFailsFastAsUnavailable() async throws {
        var configuration = try TestRedis.configuration
        configuration.port = 1
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let client = RedisClient(configuration: configuration, logger: quiet)
        for _ in 0..<2 {
            await #expect {
                _ = try await client.send(["PING"])
            } throws: { error in
                (error as? RedisError)?.code == .unavailable
            }
        }
    }
}
