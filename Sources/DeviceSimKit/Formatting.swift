import Foundation
import PlaybackCore

/// Readable one-line forms of states and device lists, for the console.
public enum Formatting {
    /// `positionMs`: where playback is now (a playing track moves on from the state's own
    /// position); nil: the state's position.
    public static func state(_ state: PlayerState, positionMs: Int64? = nil) -> String {
        guard let track = state.track else {
            return "nothing loaded (v\(state.version), active: \(state.activeDevice ?? "nobody"))"
        }
        let position = CommandParser.clock(positionMs ?? state.position(at: state.positionAt))
        var text = "\(state.isPlaying ? "▶" : "❚❚") \(track.id) \"\(track.title)\" — \(track.artist) at \(position)/\(CommandParser.clock(track.durationMs))"
        text += " on \(state.activeDevice ?? "nobody"), vol \(state.volume)"
        if state.repeat != .off { text += ", repeat \(state.repeat.rawValue)" }
        if state.shuffle { text += ", shuffled" }
        if let queue = state.queue, !queue.isEmpty {
            text += ", next: " + queue.prefix(3).map { "\($0.entry)=\($0.track.id)" }.joined(separator: " ") + (queue.count > 3 ? " …(\(queue.count))" : "")
        }
        return text
    }

    /// Recently played, one line per play: when it ended, the track, how long it was heard, where, why it ended.
    public static func history(_ items: [PlayedItem]) -> String {
        guard !items.isEmpty else { return "nothing played yet" }
        let time = DateFormatter()
        time.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return items.map { item in
            let ended = time.string(from: Date(timeIntervalSince1970: Double(item.endedAt) / 1_000))
            let context = item.context.map { " from \($0.kind):\($0.id ?? "-")" } ?? ""
            return "\(ended)  \(item.track.id) \"\(item.track.title)\" — \(item.track.artist), \(CommandParser.clock(item.msPlayed)) heard on \(item.device?.id ?? "?")\(context), \(item.reason.rawValue)"
        }.joined(separator: "\n")
    }

    public static func devices(_ devices: [DeviceInfo]) -> String {
        guard !devices.isEmpty else { return "no devices" }
        return "devices: " + devices.map { "\($0.id)\($0.active ? "●" : "")\($0.online ? "" : " (offline)")" }.joined(separator: ", ")
    }
}
