import Foundation
import PlaybackCore
import Testing

/// The hand-written writers of the hot server messages against `MessageCodec` (Foundation's
/// encoder with sorted keys): the same bytes, for the golden examples and for random messages.
@Suite("ServerMessageJSON")
struct ServerMessageJSONTests {
    static let handWritten: Set<String> = ["state", "ack", "lease_granted", "lease_revoked", "devices", "welcome"]

    /// Bytes equal to the codec's, and the codec's decoder reads them back equal.
    func check(_ message: ServerMessage, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let written = try #require(ServerMessageJSON.encode(message), sourceLocation: sourceLocation)
        let reference = try MessageCodec().encode(message)
        #expect(String(decoding: written, as: UTF8.self) == String(decoding: reference, as: UTF8.self), sourceLocation: sourceLocation)
        #expect(try MessageCodec().decodeServerMessage(written) == message, sourceLocation: sourceLocation)
    }

    @Test(arguments: ProtocolExampleTests.examples("server").filter { handWritten.contains(String($0.prefix { $0 != "." })) })
    func goldenExampleReEncodesToTheSameJSON(name: String) throws {
        let data = try ProtocolExampleTests.load("server", name)
        let message = try MessageCodec().decodeServerMessage(data)
        try check(message)
        let written = try #require(ServerMessageJSON.encode(message))
        #expect(try JSONValue.parse(Data(written)) == JSONValue.parse(data), "canonical form of \(name)")
    }

    @Test func theOtherTypesAreLeftToTheCodec() {
        #expect(ServerMessageJSON.encode(.clock(t0: .integer(1), serverTime: 2)) == nil)
        #expect(ServerMessageJSON.encode(.error(.init(id: nil, error: .badRequest("x")))) == nil)
    }

    @Test(arguments: 0..<8)
    func everyMessageOfARandomSessionIsWrittenAsTheCodecWritesIt(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &+ 4_242)
        var state = Playback.initial
        var now: Int64 = 1_764_000_000_000
        for step in 0..<150 {
            now += Int64(rng.next() % 30_000)
            let input = ReducerPropertyTests.randomInput(&rng, state: state)
            let sender = ReducerPropertyTests.senders[Int(rng.next() % UInt64(ReducerPropertyTests.senders.count))]
            guard let next = try? Fixture.reducer.apply(input, to: state, environment: Fixture.env(now, from: sender, seed: rng.next()), ifVersion: nil)
            else { continue }
            state = next.playback
            let player = state.playerState(includeQueue: next.queueChanged)
            try check(.state(.init(state: player, cause: .init(op: input.causeOp, device: sender, request: step % 3 == 0 ? nil : "r-\(step)"))))
            try check(.ack(.init(id: "r-\(step)", version: state.version, entry: next.entry)))
            if let lease = next.lease {
                try check(.leaseGranted(.init(epoch: lease.epoch, state: state.playerState(includeQueue: true))))
                try check(.leaseRevoked(.init(epoch: lease.epoch, reason: lease.reason, by: lease.granted)))
            }
            let devices = ReducerPropertyTests.senders.compactMap { $0 }.enumerated().map { index, id in
                DeviceInfo(id: id, name: "Device \(index)", kind: DeviceKind.allCases[index % DeviceKind.allCases.count],
                           online: index % 2 == 0, active: id == state.activeDevice, lastSeen: now - Int64(index))
            }
            try check(.devices(devices))
            try check(.welcome(.init(
                session: "s-\(step)", serverTime: now, heartbeatMs: 15_000, limits: .init(maxMessageBytes: 65_536, messagesPerS: 100),
                devices: devices, state: state.playerState(includeQueue: true), changed: step % 2 == 0)))
        }
    }

    @Test func stringsWithQuotesControlCharactersAndAnyUnicodeAreEscapedAsTheCodecDoes() throws {
        let odd = "q\"b\\s/l\nr\rt\tb\u{8}f\u{c} \u{1} \u{1f} \u{7f} é 😀 \u{2028}"
        let track = Track(id: "t1", title: odd, artist: odd, durationMs: 1)
        let state = PlayerState(
            epoch: 1, version: 2, activeDevice: odd, track: track, context: .init(kind: odd, id: odd),
            queue: [QueueEntry(entry: odd, source: .queue, track: track)])
        try check(.state(.init(state: state, cause: .init(op: odd, device: odd, request: odd))))
        try check(.leaseRevoked(.init(epoch: 3, reason: .takenOver, by: nil, message: odd)))
        try check(.ack(.init(id: odd, version: .max, entry: odd)))
        try check(.devices([DeviceInfo(id: odd, name: odd, kind: .web, online: true, active: false, lastSeen: .min)]))
    }
}
