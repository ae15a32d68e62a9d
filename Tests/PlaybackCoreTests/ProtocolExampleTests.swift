import Foundation
import PlaybackCore
import Testing

/// The golden messages in protocol/examples decode into the Swift types and re-encode to the same JSON.
@Suite("protocol/examples round trip")
struct ProtocolExampleTests {
    static let examplesDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("protocol/examples")

    static func examples(_ direction: String) -> [String] {
        let directory = examplesDirectory.appendingPathComponent(direction)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted()
    }

    static func load(_ direction: String, _ name: String) throws -> Data {
        try Data(contentsOf: examplesDirectory.appendingPathComponent(direction).appendingPathComponent(name))
    }

    @Test func everyMessageTypeHasExamples() {
        let client = Set(Self.examples("client").map { String($0.prefix { $0 != "." }) })
        let server = Set(Self.examples("server").map { String($0.prefix { $0 != "." }) })
        #expect(client == ["hello", "command", "report", "track_ended", "clock", "release", "auth", "history"])
        #expect(server == ["welcome", "ack", "error", "state", "lease_revoked", "lease_granted", "clock", "devices", "history"])
        let ops = Set(Self.examples("client").filter { $0.hasPrefix("command.") }.map { $0.split(separator: ".")[1] })
        #expect(Set(Command.Op.allCases.map(\.rawValue)).isSubset(of: ops.map { String($0.split(separator: "-")[0]) }))
    }

    @Test(arguments: examples("client"))
    func clientExampleRoundTrips(name: String) throws {
        let data = try Self.load("client", name)
        let message = try MessageCodec().decodeClientMessage(data).get()
        #expect(message.type == name.prefix { $0 != "." }.description)
        #expect(try JSONValue.parse(MessageCodec().encode(message)) == JSONValue.parse(data))
    }

    @Test(arguments: examples("server"))
    func serverExampleRoundTrips(name: String) throws {
        let data = try Self.load("server", name)
        let message = try MessageCodec().decodeServerMessage(data)
        #expect(message.type == name.prefix { $0 != "." }.description)
        #expect(try JSONValue.parse(MessageCodec().encode(message)) == JSONValue.parse(data))
    }

    @Test func stateWithoutQueueEncodesEveryOtherFieldAsNull() throws {
        let event = ServerMessage.state(.init(
            state: Playback.initial.playerState(includeQueue: false), cause: .init(op: "expired", device: nil, request: nil)))
        let json = try JSONValue.parse(MessageCodec().encode(event))
        guard case .object(let root) = json, case .object(let state)? = root["state"] else {
            Issue.record("not an object: \(json)")
            return
        }
        #expect(state["active_device"] == .null && state["track"] == .null && state["context"] == .null)
        #expect(state["queue"] == nil)
        #expect(root["cause"] == .object(["op": .string("expired"), "device": .null, "request": .null]))
    }
}
