/// The server messages on the hot path (`state`, `ack`, `lease_granted`, `lease_revoked`,
/// `devices`, `welcome`) as JSON, written by hand: every change is encoded once per change, and
/// Foundation's `JSONEncoder` (its generic machinery, not the bytes) was the largest cost left on
/// the command path. The bytes are exactly `MessageCodec.encode`'s (sorted keys, the same
/// escapes), which `ServerMessageJSONTests` checks over random messages and the golden examples.
public enum ServerMessageJSON {
    /// The message's JSON; nil for the types `MessageCodec` writes (`error`, `clock`, `history`).
    public static func encode(_ message: ServerMessage) -> [UInt8]? {
        var out = JSONWriter(capacity: 512)
        switch message {
        case .state(let event):
            out.open("{")
            out.key("cause"); out.cause(event.cause)
            out.key("state"); out.playerState(event.state)
            out.key("type"); out.string("state")
            out.close("}")
        case .ack(let ack):
            out.open("{")
            if let entry = ack.entry { out.key("entry"); out.string(entry) }
            out.key("id"); out.string(ack.id)
            out.key("type"); out.string("ack")
            out.key("version"); out.int(ack.version)
            out.close("}")
        case .leaseGranted(let granted):
            out.open("{")
            out.key("confirm_by")
            if let confirmBy = granted.confirmBy { out.int(confirmBy) } else { out.null() }
            out.key("epoch"); out.int(granted.epoch)
            out.key("state"); out.playerState(granted.state)
            out.key("type"); out.string("lease_granted")
            out.close("}")
        case .leaseRevoked(let revoked):
            out.open("{")
            out.key("by"); out.optionalString(revoked.by)
            out.key("epoch"); out.int(revoked.epoch)
            out.key("message"); out.string(revoked.message)
            out.key("reason"); out.string(revoked.reason.rawValue)
            out.key("type"); out.string("lease_revoked")
            out.close("}")
        case .devices(let devices):
            out.open("{")
            out.key("devices"); out.devices(devices)
            out.key("type"); out.string("devices")
            out.close("}")
        case .welcome(let welcome):
            out.open("{")
            out.key("changed"); out.bool(welcome.changed)
            out.key("devices"); out.devices(welcome.devices)
            out.key("heartbeat_ms"); out.int(welcome.heartbeatMs)
            out.key("limits"); out.open("{")
            out.key("max_message_bytes"); out.int(Int64(welcome.limits.maxMessageBytes))
            out.key("messages_per_s"); out.int(Int64(welcome.limits.messagesPerS))
            out.close("}")
            out.key("server_time"); out.int(welcome.serverTime)
            out.key("session"); out.string(welcome.session)
            out.key("state"); out.playerState(welcome.state)
            out.key("type"); out.string("welcome")
            out.close("}")
        case .error, .clock, .history:
            return nil
        }
        return out.bytes
    }

    /// A JSON string, escaped as everywhere else.
    public static func encode(string: String) -> [UInt8] {
        var out = JSONWriter(capacity: string.utf8.count + 2)
        out.string(string)
        return out.bytes
    }

    /// A device list as the `devices` message carries it (a JSON array).
    public static func encode(deviceList devices: [DeviceInfo]) -> [UInt8] {
        var out = JSONWriter(capacity: 64 + 128 * devices.count)
        out.devices(devices)
        return out.bytes
    }
}

extension JSONWriter {
    /// `PlayerState` with its keys sorted; `queue` only when present.
    mutating func playerState(_ state: PlayerState) {
        open("{")
        key("active_device"); optionalString(state.activeDevice)
        key("context")
        if let context = state.context {
            open("{")
            key("id"); optionalString(context.id)
            key("kind"); string(context.kind)
            close("}")
        } else {
            null()
        }
        key("epoch"); int(state.epoch)
        key("is_playing"); bool(state.isPlaying)
        key("position_at"); int(state.positionAt)
        key("position_ms"); int(state.positionMs)
        if let queue = state.queue {
            key("queue"); open("[")
            for entry in queue {
                element(); open("{")
                key("entry"); string(entry.entry)
                key("source"); string(entry.source.rawValue)
                key("track"); sortedTrack(entry.track)
                close("}")
            }
            close("]")
        }
        key("repeat"); string(state.repeat.rawValue)
        key("shuffle"); bool(state.shuffle)
        key("track")
        if let track = state.track { sortedTrack(track) } else { null() }
        key("version"); int(state.version)
        key("volume"); int(Int64(state.volume))
        close("}")
    }

    mutating func cause(_ cause: ServerMessage.Cause) {
        open("{")
        key("device"); optionalString(cause.device)
        key("op"); string(cause.op)
        key("request"); optionalString(cause.request)
        close("}")
    }

    mutating func devices(_ devices: [DeviceInfo]) {
        open("[")
        for device in devices {
            element(); open("{")
            key("active"); bool(device.active)
            if let capabilities = device.capabilities { key("capabilities"); strings(capabilities) }
            key("id"); string(device.id)
            key("kind"); string(device.kind.rawValue)
            key("last_seen"); int(device.lastSeen)
            key("name"); string(device.name)
            key("online"); bool(device.online)
            if let rtt = device.rttMs { key("rtt_ms"); int(Int64(rtt)) }
            if let volume = device.volumePercent { key("volume_percent"); int(Int64(volume)) }
            close("}")
        }
        close("]")
    }

    /// A track with sorted keys (the stored playback keeps declaration order: `track(_:)`).
    mutating func sortedTrack(_ track: Track) {
        open("{")
        key("artist"); string(track.artist)
        key("duration_ms"); int(track.durationMs)
        key("id"); string(track.id)
        key("title"); string(track.title)
        close("}")
    }

    mutating func optionalString(_ value: String?) {
        if let value { string(value) } else { null() }
    }
}
