import NIOCore
import Testing

@testable import RedisClient

@Suite("RESP through hiredis")
struct RESPCodecTests {
    static let wire = "*5\r\n+OK\r\n:-42\r\n$6\r\na\r\nb\r\n\r\n*3\r\n$-1\r\n*0\r\n*1\r\n-ERR nested\r\n$0\r\n\r\n"
    static let expected: [RESPValue] = [
        .array([
            .simpleString("OK"), .integer(-42), .bulkString(ByteBuffer(string: "a\r\nb\r\n")),
            .array([.null, .array([]), .array([.error("ERR nested")])]), .bulkString(ByteBuffer()),
        ])
    ]

    func parse(_ chunks: [ArraySlice<UInt8>]) throws -> [RESPValue] {
        let parser = RESPParser()
        var replies: [RESPValue] = []
        for chunk in chunks {
            parser.feed(ByteBuffer(bytes: chunk))
            while let reply = try parser.next() { replies.append(reply) }
        }
        return replies
    }

    @Test func aReplySplitAtEveryByteBoundaryParsesTheSame() throws {
        let bytes = Array(Self.wire.utf8)
        #expect(try parse([bytes[...]]) == Self.expected)
        #expect(try parse(bytes.indices.map { bytes[$0...$0] }) == Self.expected, "one byte at a time")
        for split in 1..<bytes.count {
            #expect(try parse([bytes[..<split], bytes[split...]]) == Self.expected, "split at \(split)")
        }
    }

    @Test func garbageIsAProtocolError() {
        let parser = RESPParser()
        parser.feed(ByteBuffer(string: "?what\r\n"))
        #expect(throws: RESPParser.ProtocolError.self) { try parser.next() }
    }

    /// hiredis allocates an array's slots on its header: an absurd count is refused before any
    /// allocation (a fuzzed "*999999991" asked for 8 GB), nested or not; a large real one parses.
    @Test func anArrayAnnouncingMoreThanAMillionElementsIsAProtocolError() throws {
        for wire in ["*999999991\r\n$0\r\n\r\n", "*1\r\n*2000000\r\n:1\r\n"] {
            let parser = RESPParser()
            parser.feed(ByteBuffer(string: wire))
            #expect(throws: RESPParser.ProtocolError.self, "\(wire.debugDescription)") { try parser.next() }
        }
        let many = "*10000\r\n" + String(repeating: ":7\r\n", count: 10_000)
        #expect(try parse([Array(many.utf8)[...]]) == [.array(Array(repeating: .integer(7), count: 10_000))])
    }

    @Test func commandsAreFormattedAsRESPArraysOfBulkStrings() {
        var buffer = ByteBuffer()
        RESPEncoder.encode(["SET", "key", .bytes(ByteBuffer(bytes: [0, 13, 10, 255])), .integer(-7)], into: &buffer)
        #expect(Array(buffer.readableBytesView) == Array("*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4\r\n".utf8) + [0, 13, 10, 255] + Array("\r\n$2\r\n-7\r\n".utf8))
    }

    @Test(arguments: [
        ("redis://127.0.0.1:6390/2", "127.0.0.1", 6390, 2, nil as String?, nil as String?),
        ("redis://:s%40cret@cache.local", "cache.local", 6379, 0, nil, "s@cret"),
        ("redis://app:pw@10.0.0.1:7000/0", "10.0.0.1", 7000, 0, "app", "pw"),
    ])
    func urlsAreParsed(url: String, host: String, port: Int, database: Int, user: String?, password: String?) throws {
        let configuration = try RedisConfiguration(url: url)
        #expect(configuration.host == host && configuration.port == port && configuration.database == database)
        #expect(configuration.username == user && configuration.password == password)
    }

    @Test(arguments: ["http://x", "redis://", "redis://host/notanumber"])
    func badURLsAreRefused(url: String) {
        #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
    }
}
