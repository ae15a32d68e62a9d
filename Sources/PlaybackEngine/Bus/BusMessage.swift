import Foundation
import NIOCore

/// What travels on a user's channel between nodes: a committed change (its messages already
/// encoded by the committing node, and the stored playback), a device list, a replacement notice,
/// or several of them.
///
/// Wire form: a small binary header, then the encoded messages and the stored playback back to
/// back (their lengths are in the header), so a receiving node forwards the bytes without
/// decoding a state, and keeps the stored playback to decode only if it runs a command itself.
/// The stored playback comes last: the commit script appends it, so it crosses the socket once.
///
/// Header: the byte 0xB1, a flags byte (1 change, 2 devices, 4 except, 8 replace); for a change
/// its version and epoch (Int64), the active, revoked and granted devices (strings) and the
/// lengths of the state, revoked, granted and stored parts (UInt32); the device list as JSON
/// (UInt32 length); `except`; the replaced device and session; the `traceparent` (flag 16). Strings are a UInt16 length
/// (0xFFFF for none) and UTF-8. Frames of earlier nodes (a JSON header and a newline) are read too.
public struct BusMessage: Sendable {
    struct Replacement: Codable, Sendable {
        var device: String
        var session: String
    }

    /// A committed change.
    var event: PreparedEvent?
    /// The playback after the change as stored (`PlaybackJSON`), at `event.version`.
    var stored: ByteBuffer?
    /// The user's device list, sent to every device except `except`.
    var devices: [DeviceInfo]?
    var except: String?
    /// A device connected anew: its other connections are closed with 4001.
    var replace: Replacement?
    /// The W3C `traceparent` of the commit, when the command is traced: each daemon's delivery
    /// joins its trace.
    var traceParent: String?

    init(event: PreparedEvent, devices: [DeviceInfo]? = nil) {
        self.event = event
        self.devices = devices
    }

    init(devices: [DeviceInfo], except: String? = nil, replace: Replacement? = nil) {
        self.devices = devices
        self.except = except
        self.replace = replace
    }


    struct Malformed: Error {}

    static let marker: UInt8 = 0xB1

    private enum Flag {
        static let event: UInt8 = 1
        static let devices: UInt8 = 2
        static let except: UInt8 = 4
        static let replace: UInt8 = 8
        static let trace: UInt8 = 16
    }

    func encoded() -> ByteBuffer {
        var buffer = encodedHead(storedLength: stored?.readableBytes ?? 0)
        if var stored { buffer.writeBuffer(&stored) }
        return buffer
    }

    /// The frame without the stored playback, whose length it announces.
    func encodedHead(storedLength: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(64 + (event.map { $0.state.bytes.readableBytes } ?? 0))
        var flags: UInt8 = 0
        if event != nil { flags |= Flag.event }
        if devices != nil { flags |= Flag.devices }
        if except != nil { flags |= Flag.except }
        if replace != nil { flags |= Flag.replace }
        if traceParent != nil { flags |= Flag.trace }
        buffer.writeInteger(Self.marker)
        buffer.writeInteger(flags)
        if let event {
            buffer.writeInteger(event.version)
            buffer.writeInteger(event.epoch)
            Self.write(event.activeDevice, into: &buffer)
            Self.write(event.revoked?.device, into: &buffer)
            Self.write(event.granted?.device, into: &buffer)
            buffer.writeInteger(UInt32(event.state.bytes.readableBytes))
            buffer.writeInteger(UInt32(event.revoked?.message.bytes.readableBytes ?? 0))
            buffer.writeInteger(UInt32(event.granted?.message.bytes.readableBytes ?? 0))
            buffer.writeInteger(UInt32(storedLength))
        }
        if let devices {
            let json = ServerMessageJSON.encode(deviceList: devices)
            buffer.writeInteger(UInt32(json.count))
            buffer.writeBytes(json)
        }
        if let except { Self.write(except, into: &buffer) }
        if let replace {
            Self.write(replace.device, into: &buffer)
            Self.write(replace.session, into: &buffer)
        }
        if let traceParent { Self.write(traceParent, into: &buffer) }
        if let event {
            var state = event.state.bytes
            buffer.writeBuffer(&state)
            if var revoked = event.revoked?.message.bytes { buffer.writeBuffer(&revoked) }
            if var granted = event.granted?.message.bytes { buffer.writeBuffer(&granted) }
        }
        return buffer
    }

    init(decoding payload: ByteBuffer) throws {
        if payload.getInteger(at: payload.readerIndex, as: UInt8.self) == UInt8(ascii: "{") {
            try self.init(decodingJSONHeader: payload)
        } else {
            try self.init(decodingBinaryHeader: payload)
        }
    }

    private init(decodingBinaryHeader payload: ByteBuffer) throws {
        var payload = payload
        guard payload.readInteger(as: UInt8.self) == Self.marker, let flags = payload.readInteger(as: UInt8.self)
        else { throw Malformed() }
        var lengths: [Int] = []
        var header: (version: Int64, epoch: Int64, active: String?, revoked: String?, granted: String?)?
        if flags & Flag.event != 0 {
            guard let version = payload.readInteger(as: Int64.self), let epoch = payload.readInteger(as: Int64.self) else { throw Malformed() }
            let active = try Self.readString(&payload)
            let revoked = try Self.readString(&payload)
            let granted = try Self.readString(&payload)
            for _ in 0..<4 {
                guard let length = payload.readInteger(as: UInt32.self) else { throw Malformed() }
                lengths.append(Int(length))
            }
            header = (version, epoch, active, revoked, granted)
        }
        if flags & Flag.devices != 0 {
            guard let length = payload.readInteger(as: UInt32.self), let json = payload.readSlice(length: Int(length)) else { throw Malformed() }
            devices = try JSONDecoder().decode([DeviceInfo].self, from: Data(json.readableBytesView))
        }
        if flags & Flag.except != 0 { except = try Self.readString(&payload) }
        if flags & Flag.replace != 0 {
            guard let device = try Self.readString(&payload), let session = try Self.readString(&payload) else { throw Malformed() }
            replace = Replacement(device: device, session: session)
        }
        if flags & Flag.trace != 0 { traceParent = try Self.readString(&payload) }
        if let header {
            try readEvent(
                from: &payload, version: header.version, epoch: header.epoch, active: header.active, revoked: header.revoked,
                granted: header.granted, lengths: lengths)
        }
    }

    /// The parts after the header: the messages, then the stored playback.
    private mutating func readEvent(
        from payload: inout ByteBuffer, version: Int64, epoch: Int64, active: String?, revoked revokedDevice: String?,
        granted grantedDevice: String?, lengths: [Int]
    ) throws {
        guard lengths.count >= 3, let stateBytes = payload.readSlice(length: lengths[0]) else { throw Malformed() }
        var revoked: (device: String, message: EncodedMessage)?
        var granted: (device: String, message: EncodedMessage)?
        if lengths[1] > 0 {
            guard let device = revokedDevice, let bytes = payload.readSlice(length: lengths[1]) else { throw Malformed() }
            revoked = (device, EncodedMessage(type: "lease_revoked", bytes: bytes))
        }
        if lengths[2] > 0 {
            guard let device = grantedDevice, let bytes = payload.readSlice(length: lengths[2]) else { throw Malformed() }
            granted = (device, EncodedMessage(type: "lease_granted", bytes: bytes))
        }
        if lengths.count > 3, lengths[3] > 0 {
            guard let bytes = payload.readSlice(length: lengths[3]) else { throw Malformed() }
            stored = bytes
        }
        event = PreparedEvent(
            version: version, epoch: epoch, activeDevice: active, state: EncodedMessage(type: "state", bytes: stateBytes),
            revoked: revoked, granted: granted)
    }

    private static func write(_ string: String?, into buffer: inout ByteBuffer) {
        guard let string else {
            buffer.writeInteger(UInt16.max)
            return
        }
        let utf8 = string.utf8
        buffer.writeInteger(UInt16(min(utf8.count, Int(UInt16.max) - 1)))
        buffer.writeBytes(utf8.prefix(Int(UInt16.max) - 1))
    }

    private static func readString(_ buffer: inout ByteBuffer) throws -> String? {
        guard let length = buffer.readInteger(as: UInt16.self) else { throw Malformed() }
        if length == UInt16.max { return nil }
        guard let string = buffer.readString(length: Int(length)) else { throw Malformed() }
        return string
    }

    // MARK: Frames with a JSON header (nodes of the previous release)

    private struct JSONHeader: Codable {
        struct Event: Codable {
            var version: Int64
            var epoch: Int64
            var active: String?
            var lengths: [Int]
            var revoked: String?
            var granted: String?
        }

        var event: Event?
        var devices: [DeviceInfo]?
        var except: String?
        var replace: Replacement?
    }

    private init(decodingJSONHeader payload: ByteBuffer) throws {
        var payload = payload
        guard let newline = payload.readableBytesView.firstIndex(of: UInt8(ascii: "\n")),
            let headerBytes = payload.readBytes(length: newline - payload.readerIndex)
        else { throw Malformed() }
        payload.moveReaderIndex(forwardBy: 1)
        let header = try JSONDecoder().decode(JSONHeader.self, from: Data(headerBytes))
        devices = header.devices
        except = header.except
        replace = header.replace
        guard let wire = header.event else { return }
        guard wire.lengths.allSatisfy({ $0 >= 0 }) else { throw Malformed() }
        try readEvent(
            from: &payload, version: wire.version, epoch: wire.epoch, active: wire.active, revoked: wire.revoked,
            granted: wire.granted, lengths: wire.lengths)
    }
}
