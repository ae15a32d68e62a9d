import DeviceSimKit
import NIOCore
import PlaybackEngine
import Testing

/// The light swarm's scanner reads the daemon's own messages as a full decode would.
@Suite("MessageSummary")
struct MessageSummaryTests {
    func summary(_ message: ServerMessage) -> MessageSummary? {
        MessageSummary(EncodedMessage(message).bytes.readableBytesView)
    }

    @Test func findsTypeAndRequestOfEachMessage() {
        let track = Track(id: "t1", title: #"A "request":"fake" title"#, artist: #"\"id\":\"x"#, durationMs: 1_000)
        let state = PlayerState(epoch: 1, version: 2, activeDevice: "d0", track: track)
        #expect(summary(.state(.init(state: state, cause: .init(op: "seek", device: "d0", request: "c-17")))) == .init(type: "state", request: "c-17"))
        #expect(summary(.state(.init(state: state, cause: .init(op: "expired", device: "d0", request: nil)))) == .init(type: "state"))
        #expect(summary(.ack(.init(id: "c-18", version: 3, entry: "e9"))) == .init(type: "ack", request: "c-18"))
        #expect(summary(.error(.init(id: "c-19", error: .versionConflict(current: 4)))) == .init(type: "error", request: "c-19", errorCode: "version_conflict"))
        #expect(summary(.leaseGranted(.init(epoch: 2, state: state)))?.type == "lease_granted")
        #expect(summary(.devices([])) == .init(type: "devices"))
    }

    @Test func bytesWithoutATypeAreNoSummary() {
        #expect(MessageSummary(ByteBuffer(string: #"{"seq":1}"#).readableBytesView) == nil)
        #expect(MessageSummary(ByteBuffer(string: #"{"type":"unterminated"#).readableBytesView) == nil)
        #expect(MessageSummary(ByteBuffer().readableBytesView) == nil)
    }
}
