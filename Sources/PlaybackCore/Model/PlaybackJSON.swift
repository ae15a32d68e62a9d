/// `Playback` as JSON, written by hand: the engines store the whole playback on every change,
/// and Foundation's `JSONEncoder` was the largest single cost of a commit (its generic machinery,
/// not the bytes). The output has the keys of `Playback.CodingKeys` and is read back by
/// `JSONDecoder` into an equal value (PlaybackJSONTests checks that over random playbacks).
public enum PlaybackJSON {
    public static func encode(_ playback: Playback) -> [UInt8] {
        var out = JSONWriter(capacity: 512 + playback.contextTracks.count * 96)
        out.open("{")
        out.key("epoch"); out.int(playback.epoch)
        out.key("version"); out.int(playback.version)
        if let activeDevice = playback.activeDevice { out.key("active_device"); out.string(activeDevice) }
        if let current = playback.current {
            out.key("current"); out.open("{")
            out.key("entry"); out.string(current.entry)
            out.key("source"); out.string(current.source.rawValue)
            out.key("track"); out.track(current.track)
            out.close("}")
        }
        out.key("is_playing"); out.bool(playback.isPlaying)
        out.key("position_ms"); out.int(playback.positionMs)
        out.key("position_at"); out.int(playback.positionAt)
        out.key("volume"); out.int(Int64(playback.volume))
        out.key("repeat"); out.string(playback.repeatMode.rawValue)
        out.key("shuffle"); out.bool(playback.shuffle)
        if let context = playback.context {
            out.key("context"); out.open("{")
            out.key("kind"); out.string(context.kind)
            out.key("id")
            if let id = context.id { out.string(id) } else { out.null() }
            out.close("}")
        }
        out.key("cursor"); out.int(Int64(playback.cursor))
        out.key("next_entry"); out.int(playback.nextEntry)
        out.key("user_queue"); out.open("[")
        for entry in playback.userQueue {
            out.element(); out.open("{")
            out.key("entry"); out.string(entry.entry)
            out.key("source"); out.string(entry.source.rawValue)
            out.key("track"); out.track(entry.track)
            out.close("}")
        }
        out.close("]")
        out.key("play_order"); out.strings(playback.playOrder)
        out.key("context_order"); out.strings(playback.contextOrder)
        out.key("context_tracks"); out.open("{")
        for (entry, track) in playback.contextTracks {
            out.key(entry); out.track(track)
        }
        out.close("}")
        if let volumes = playback.deviceVolumes {
            out.key("device_volumes"); out.open("{")
            for (device, volume) in volumes.sorted(by: { $0.key < $1.key }) {
                out.key(device); out.int(Int64(volume))
            }
            out.close("}")
        }
        if let pending = playback.pendingTransfer {
            out.key("pending_transfer"); out.open("{")
            if let source = pending.source { out.key("source"); out.string(source) }
            out.key("confirm_by"); out.int(pending.confirmBy)
            out.close("}")
        }
        if let mark = playback.restoredFrom {
            out.key("restored_from"); out.open("{")
            out.key("source"); out.int(mark.source)
            out.key("at"); out.int(mark.at)
            out.key("settles_at"); out.int(mark.settlesAt)
            out.close("}")
        }
        if let listening = playback.listening {
            out.key("listening"); out.open("{")
            out.key("entry"); out.string(listening.entry)
            out.key("track_id"); out.string(listening.trackID)
            if let device = listening.device { out.key("device"); out.string(device) }
            out.key("started_at"); out.int(listening.startedAt)
            out.key("played_ms"); out.int(listening.playedMs)
            out.key("counted_until"); out.int(listening.countedUntil)
            out.close("}")
        }
        out.close("}")
        return out.bytes
    }
}

/// Appends JSON tokens; commas are placed by remembering whether the current container has a
/// member yet.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    /// Per open container: whether it already has a member.
    private var hasMember: [Bool] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    mutating func open(_ bracket: Unicode.Scalar) {
        bytes.append(UInt8(ascii: bracket))
        hasMember.append(false)
    }

    mutating func close(_ bracket: Unicode.Scalar) {
        bytes.append(UInt8(ascii: bracket))
        hasMember.removeLast()
    }

    /// Starts an object member.
    mutating func key(_ name: String) {
        element()
        string(name)
        bytes.append(UInt8(ascii: ":"))
    }

    /// Starts an array element (or a member: a comma when it is not the first).
    mutating func element() {
        if hasMember[hasMember.count - 1] { bytes.append(UInt8(ascii: ",")) } else { hasMember[hasMember.count - 1] = true }
    }

    mutating func int(_ value: Int64) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var rest = value.magnitude
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var start = digits.count
            repeat {
                start -= 1
                digits[start] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest > 0
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: digits[start...]))
        }
    }

    mutating func bool(_ value: Bool) { bytes.append(contentsOf: (value ? "true" : "false").utf8) }

    mutating func null() { bytes.append(contentsOf: "null".utf8) }

    mutating func strings(_ values: [String]) {
        open("[")
        for value in values {
            element()
            string(value)
        }
        close("]")
    }

    mutating func track(_ track: Track) {
        open("{")
        key("id"); string(track.id)
        key("title"); string(track.title)
        key("artist"); string(track.artist)
        key("duration_ms"); int(track.durationMs)
        close("}")
    }

    /// A JSON string escaped as Foundation's `JSONEncoder` does: `"` and `\`, the short forms of
    /// backspace, form feed, newline, return and tab, other control characters as `\u00XX`, the
    /// rest as UTF-8.
    mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        // Most strings (ids, titles, keys) need no escape: copied in one go.
        var value = value
        let copied = value.withUTF8 { utf8 in
            guard !utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return false }
            bytes.append(contentsOf: utf8)
            return true
        }
        if copied {
            bytes.append(UInt8(ascii: "\""))
            return
        }
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x08: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0xf)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}
