import NIOCore
import Synchronization
@testable import PlaybackEngine
import Testing

/// The frames nodes exchange on a user's channel.
@Suite("bus frames")
struct BusMessageTests {
    static let state = PlayerState(epoch: 4, version: 9, activeDevice: "b", track: Track(id: "t1", title: "Ä \"x\"", artist: "y", durationMs: 5))

    static func event(revoked: Bool, granted: Bool) -> PreparedEvent {
        PlaybackEvent(
            state: state, queueChanged: true,
            lease: revoked || granted ? LeaseChange(epoch: 4, revoked: revoked ? "a" : nil, granted: granted ? "b" : nil, reason: .transferred) : nil,
            cause: .init(op: "transfer", device: "a", request: "r-1")
        ).prepared
    }

    static let devices = [DeviceInfo(id: "a", name: "Phone", kind: .smartphone, online: true, active: false, lastSeen: 12)]

    func same(_ decoded: BusMessage, _ original: BusMessage) {
        #expect(decoded.event?.version == original.event?.version && decoded.event?.epoch == original.event?.epoch)
        #expect(decoded.event?.activeDevice == original.event?.activeDevice)
        #expect(decoded.event?.state.bytes == original.event?.state.bytes)
        #expect(decoded.event?.revoked?.device == original.event?.revoked?.device)
        #expect(decoded.event?.revoked?.message.bytes == original.event?.revoked?.message.bytes)
        #expect(decoded.event?.granted?.message.bytes == original.event?.granted?.message.bytes)
        #expect(decoded.stored == original.stored)
        #expect(decoded.devices == original.devices && decoded.except == original.except)
        #expect(decoded.replace?.device == original.replace?.device && decoded.replace?.session == original.replace?.session)
        #expect(decoded.traceParent == original.traceParent)
    }

    /// A traced commit's frame carries its `traceparent` beside every other part.
    @Test(arguments: [false, true])
    func aTraceParentRidesTheFrame(withDevices: Bool) throws {
        var message = BusMessage(event: Self.event(revoked: true, granted: true), devices: withDevices ? Self.devices : nil)
        message.traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        message.stored = ByteBuffer(string: #"{"epoch":4}"#)
        var appended = message.encodedHead(storedLength: message.stored?.readableBytes ?? 0)
        appended.writeString(#"{"epoch":4}"#)
        let decoded = try BusMessage(decoding: appended)
        same(decoded, message)
        #expect(decoded.traceParent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    }

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func aChangeRoundTrips(revoked: Bool, granted: Bool) throws {
        var message = BusMessage(event: Self.event(revoked: revoked, granted: granted), devices: revoked ? Self.devices : nil)
        message.stored = ByteBuffer(string: #"{"epoch":4}"#)
        same(try BusMessage(decoding: message.encoded()), message)
        // The commit script appends the stored playback to the head.
        var appended = message.encodedHead(storedLength: message.stored?.readableBytes ?? 0)
        appended.writeString(#"{"epoch":4}"#)
        same(try BusMessage(decoding: appended), message)
    }

    @Test func devicesAndAReplacementRoundTrip() throws {
        let message = BusMessage(devices: Self.devices, except: "a", replace: .init(device: "a", session: "s-2"))
        same(try BusMessage(decoding: message.encoded()), message)
        let none = BusMessage(devices: [])
        same(try BusMessage(decoding: none.encoded()), none)
    }

    @Test func aFrameOfThePreviousReleaseIsRead() throws {
        let event = Self.event(revoked: true, granted: true)
        var frame = ByteBuffer(string: """
            {"event":{"version":9,"epoch":4,"active":"b","lengths":[\(event.state.bytes.readableBytes),\
            \(event.revoked!.message.bytes.readableBytes),\(event.granted!.message.bytes.readableBytes)],"revoked":"a","granted":"b"}}
            """ + "\n")
        for part in [event.state.bytes, event.revoked!.message.bytes, event.granted!.message.bytes] {
            var part = part
            frame.writeBuffer(&part)
        }
        same(try BusMessage(decoding: frame), BusMessage(event: event))
    }

    @Test(arguments: [[], [0xB1], [0xB1, 1, 0x61, 0x62], Array(#"{"event":{}}"#.utf8), Array("xyz".utf8)] as [[UInt8]])
    func malformedFramesThrow(bytes: [UInt8]) {
        #expect(throws: (any Error).self) { try BusMessage(decoding: ByteBuffer(bytes: bytes)) }
    }

    @Test func truncatedFramesThrow() throws {
        let full = BusMessage(event: Self.event(revoked: true, granted: true), devices: Self.devices).encoded()
        for length in stride(from: 0, to: full.readableBytes - 1, by: 7) {
            #expect(throws: (any Error).self) { try BusMessage(decoding: full.getSlice(at: full.readerIndex, length: length)!) }
        }
    }
}

/// Handlers read once per frame stay one call deep (a closure kept in a Mutex grew a thunk per read).
@Suite("bus handlers")
struct BusHandlersTests {
    @Test func handlersReadAMillionTimesStillCallStraightThrough() {
        let slot = BusHandlers.Slot()
        let calls = Mutex(0)
        slot.current = BusHandlers(frame: { _, _ in calls.withLock { $0 += 1 } }, resubscribed: { _ in })
        for _ in 0..<1_000_000 { _ = slot.current }
        slot.current?.frame("u", BusMessage(devices: []))
        #expect(calls.withLock { $0 } == 1)
    }
}
