import PlaybackCore

/// A small catalog and helpers shared by the reducer tests.
enum Fixture {
    static let minute: Int64 = 60_000

    /// t1…t9, each 200 s long except t9 (10 s); tR is licensed only in SE.
    static let tracks: [Track] =
        (1...8).map { Track(id: "t\($0)", title: "Song \($0)", artist: "Artist", durationMs: 200_000) }
        + [Track(id: "t9", title: "Short", artist: "Artist", durationMs: 10_000),
           Track(id: "tR", title: "Regional", artist: "Artist", durationMs: 200_000)]

    static let album = PlaybackContext(kind: "album", id: "a1")
    static let restrictedAlbum = PlaybackContext(kind: "album", id: "a2")

    static let catalog = StaticCatalog(
        tracks: tracks,
        contexts: [album: ["t1", "t2", "t3", "t4", "t5"], restrictedAlbum: ["t1", "tR", "t2"]],
        restrictions: ["tR": ["SE"]])

    static let reducer = PlaybackReducer(catalog: catalog)

    static let devices: [String: DevicePresence] = ["phone": .online, "laptop": .online, "speaker": .offline]

    static func env(_ now: Int64, from sender: String? = "phone", country: String? = "DE", seed: UInt64 = 7)
        -> ReducerEnvironment
    {
        ReducerEnvironment(now: now, sender: sender, country: country, devices: devices, randomSeed: seed)
    }
}

/// A user's playback driven step by step, as the engines do.
struct Player {
    var state = Playback.initial
    var reducer = Fixture.reducer
    var last: Transition?
    /// Devices that declared `transfer_confirm`, and who is online.
    var confirming: Set<String> = []
    var devices = Fixture.devices

    init(reducer: PlaybackReducer = Fixture.reducer) { self.reducer = reducer }

    @discardableResult
    mutating func apply(
        _ input: Input, at now: Int64, from sender: String? = "phone", ifVersion: Int64? = nil
    ) throws(PlaybackError) -> Transition {
        let transition = try reducer.apply(input, to: state, environment: env(now, from: sender), ifVersion: ifVersion)
        state = transition.playback
        last = transition
        return transition
    }

    @discardableResult
    mutating func run(_ command: Command, at now: Int64, from sender: String? = "phone") throws(PlaybackError) -> Transition {
        try apply(.command(command), at: now, from: sender)
    }

    /// Applies an input that must fail, and checks that it changed nothing.
    mutating func reject(_ input: Input, at now: Int64, from sender: String? = "phone", ifVersion: Int64? = nil) -> PlaybackError? {
        let before = state
        do {
            _ = try reducer.apply(input, to: state, environment: env(now, from: sender), ifVersion: ifVersion)
            return nil
        } catch {
            precondition(state == before)
            return error
        }
    }

    func env(_ now: Int64, from sender: String?) -> ReducerEnvironment {
        var env = Fixture.env(now, from: sender)
        env.confirmingDevices = confirming
        env.devices = devices
        return env
    }

    var trackID: String? { state.current?.track.id }
    var upcomingIDs: [String] { state.upcoming.map(\.track.id) }
}
