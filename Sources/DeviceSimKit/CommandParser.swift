import PlaybackCore

/// The interactive and one-shot command language of `device-sim`, e.g. `play t0042`,
/// `seek 1:23`, `vol 40`, `queue mv e3 0`, `transfer phone`.
public enum CommandParser {
    public enum Parsed: Equatable, Sendable {
        case command(Command)
        case showDevices, showState, help, quit
    }

    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var description: String
    }

    public static let help = """
        play [track]            play a track here (or resume here)     e.g. play t0042
        pause | resume | next | prev
        seek M:SS | seek S      jump within the track                  e.g. seek 1:23
        vol N                   volume 0-100                           e.g. vol 40
        repeat off|track|context
        shuffle on|off
        queue add TRACK [next]  queue rm ENTRY | queue mv ENTRY INDEX | queue clear
        transfer DEVICE [play]  move playback to another device
        devices | state | help | quit
        """

    /// Parses one line; `device` is this device's id (`play` plays here).
    public static func parse(_ line: String, device: String?) throws(Failure) -> Parsed {
        let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let verb = words.first?.lowercased() else { throw Failure(description: "type a command (help lists them)") }
        let args = Array(words.dropFirst())
        switch verb {
        case "play":
            if let track = args.first { return .command(.play(.init(trackID: track, device: device))) }
            return .command(.play(.init(device: device)))
        case "pause": return .command(.pause)
        case "resume": return .command(.resume)
        case "next": return .command(.next)
        case "prev", "previous": return .command(.previous)
        case "seek":
            guard let text = args.first, let ms = positionMs(text) else { throw Failure(description: "seek takes M:SS or seconds, e.g. seek 1:23") }
            return .command(.seek(positionMs: ms))
        case "vol", "volume":
            guard let text = args.first, let percent = Int(text) else { throw Failure(description: "vol takes a number 0-100") }
            return .command(.volume(percent: percent))
        case "repeat":
            guard let text = args.first, let mode = RepeatMode(rawValue: text) else { throw Failure(description: "repeat off|track|context") }
            return .command(.setRepeat(mode))
        case "shuffle":
            guard let text = args.first, ["on", "off"].contains(text) else { throw Failure(description: "shuffle on|off") }
            return .command(.setShuffle(text == "on"))
        case "queue": return try parseQueue(args)
        case "transfer":
            guard let target = args.first else { throw Failure(description: "transfer DEVICE [play]") }
            return .command(.transfer(device: target, play: args.dropFirst().first == "play" ? true : nil))
        case "devices": return .showDevices
        case "state": return .showState
        case "help", "?": return .help
        case "quit", "exit": return .quit
        default: throw Failure(description: "unknown command \(verb) (help lists them)")
        }
    }

    private static func parseQueue(_ args: [String]) throws(Failure) -> Parsed {
        switch (args.first, args.count) {
        case ("add", 2...): return .command(.queueAdd(trackID: args[1], at: args.count > 2 && args[2] == "next" ? .next : .end))
        case ("rm", 2), ("remove", 2): return .command(.queueRemove(entry: args[1]))
        case ("mv", 3), ("move", 3):
            guard let index = Int(args[2]) else { throw Failure(description: "queue mv ENTRY INDEX") }
            return .command(.queueMove(entry: args[1], to: index))
        case ("clear", 1): return .command(.queueClear)
        default: throw Failure(description: "queue add TRACK [next] | queue rm ENTRY | queue mv ENTRY INDEX | queue clear")
        }
    }

    /// `1:23` → 83,000; `83` → 83,000; `1:02:03` → 3,723,000.
    public static func positionMs(_ text: String) -> Int64? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...3).contains(parts.count) else { return nil }
        var seconds = 0.0
        for part in parts {
            guard let value = Double(part), value >= 0 else { return nil }
            seconds = seconds * 60 + value
        }
        return Int64(seconds * 1_000)
    }

    /// `83000` → `1:23`.
    public static func clock(_ ms: Int64) -> String {
        let seconds = max(ms, 0) / 1_000
        let rest = seconds % 60
        return "\(seconds / 60):\(rest < 10 ? "0" : "")\(rest)"
    }
}
