import PlaybackCore

let version = "0.1.0"
let usage = """
    playback-syncd \(version) — real-time playback sync daemon (wire protocol v\(ProtocolInfo.version))

    USAGE: playback-syncd [--version] [--help]

    The WebSocket server is not part of this build yet; see README.md.
    """

let arguments = CommandLine.arguments.dropFirst()
if arguments.contains("--version") {
    print(version)
} else {
    print(usage)
}
