import Foundation
import PlaybackCore

/// One thing a device saw, with its receive time (monotonic ns, comparable across the devices
/// of one process).
public enum DeviceEvent: Sendable {
    /// A connection opened (the hello follows); `server` is the index of the daemon.
    case connected(server: Int, ns: UInt64)
    case received(ServerMessage, ns: UInt64)
    case pinged(ns: UInt64)
    case closed(code: UInt16?, ns: UInt64)
    /// A message only summarized (the swarm's light mode): counted, not checked.
    case summary(MessageSummary, ns: UInt64)
}

/// Everything one device saw, in order, across its reconnections.
public struct DeviceHistory: Sendable {
    public var user: String
    public var device: String
    public var events: [DeviceEvent]

    public init(user: String, device: String, events: [DeviceEvent]) {
        self.user = user
        self.device = device
        self.events = events
    }
}

/// A command as sent, with what its effect must look like when it was acked without a new
/// version (a no-op: "pause while paused").
public struct SentCommand: Sendable {
    public enum Effect: Sendable, Equatable {
        case volume(Int)
        case playing(Bool)
        case activeDevice(String)
    }

    public var id: String
    public var user: String
    /// The command's op (`volume`, `transfer`, …), to tell which later commands could change its effect.
    public var op: String
    public var effect: Effect?
    public var sentNs: UInt64
    /// Part of the timed load (latency and throughput); false for the last command per user the
    /// swarm sends in one burst after the load, for the convergence check only.
    public var timed: Bool

    public init(id: String, user: String, op: String = "", effect: Effect?, sentNs: UInt64, timed: Bool = true) {
        self.id = id
        self.user = user
        self.op = op
        self.effect = effect
        self.timed = timed
        self.sentNs = sentNs
    }

    /// Whether a command of `op` may legitimately change what `effect` says (a later volume, a
    /// transfer to a device with a volume of its own, a pause after a resume, …).
    static func op(_ op: String, mayChange effect: Effect) -> Bool {
        switch effect {
        case .volume: ["volume", "transfer", "play"].contains(op)
        case .playing: ["pause", "resume", "play", "next", "previous", "seek", "transfer"].contains(op)
        case .activeDevice: ["transfer", "play"].contains(op)
        }
    }

    /// The checkable effect of a command, when it has one.
    public static func effect(of command: Command) -> Effect? {
        switch command {
        case .volume(let percent, nil): .volume(percent)
        case .pause: .playing(false)
        case .resume: .playing(true)
        case .transfer(let device, _): .activeDevice(device)
        default: nil
        }
    }
}
