import Foundation
import PlaybackCore
import Testing

/// Each device keeps its own volume; the state's `volume` is the active device's.
@Suite("volume per device")
struct ReducerVolumeTests {
    func playing() throws -> Player {
        var player = Player()
        try player.run(.play(.init(trackID: "t1", context: Fixture.album)), at: 10_000)
        return player
    }

    @Test func theActiveDevicesVolumeIsTheStates() throws {
        var player = try playing()
        try player.run(.volume(percent: 30), at: 11_000)
        #expect(player.state.volume == 30 && player.state.volume(of: "phone") == 30)
        #expect(player.state.deviceVolumes == ["phone": 30])
    }

    @Test func aNamedDeviceKeepsItsOwnWithoutTouchingThePlayingOne() throws {
        var player = try playing()
        try player.run(.volume(percent: 30), at: 11_000)
        let t = try player.run(.volume(percent: 80, device: "laptop"), at: 12_000)
        #expect(t.changed && t.lease == nil)
        #expect(player.state.volume == 30, "the phone still plays at 30")
        #expect(player.state.volume(of: "laptop") == 80)
    }

    @Test func aTransferAdoptsTheTargetsRememberedVolumeAndTheSourceKeepsItsOwn() throws {
        var player = try playing()
        try player.run(.volume(percent: 30), at: 11_000)
        try player.run(.volume(percent: 80, device: "laptop"), at: 12_000)
        try player.run(.transfer(device: "laptop", play: nil), at: 13_000)
        #expect(player.state.volume == 80, "no jump: the laptop plays at its own volume")
        #expect(player.state.volume(of: "phone") == 30)
        try player.run(.transfer(device: "phone", play: nil), at: 14_000)
        #expect(player.state.volume == 30, "back on the phone at the phone's")
    }

    @Test func aDeviceNeverSeenStartsAtTheVolumePlaying() throws {
        var player = try playing()
        try player.run(.volume(percent: 45), at: 11_000)
        try player.run(.transfer(device: "laptop", play: nil), at: 12_000)
        #expect(player.state.volume == 45 && player.state.volume(of: "laptop") == 45)
    }

    @Test func namingTheActiveDeviceIsTheSameAsNamingNone() throws {
        var player = try playing()
        try player.run(.volume(percent: 20, device: "phone"), at: 11_000)
        #expect(player.state.volume == 20)
        let again = try player.run(.volume(percent: 20), at: 12_000)
        #expect(!again.changed, "the same volume changes nothing")
    }

    @Test func anUnknownDeviceIsRefused() throws {
        var player = try playing()
        #expect(player.reject(.command(.volume(percent: 20, device: "toaster")), at: 11_000)?.code == .deviceNotFound)
        #expect(player.reject(.command(.volume(percent: 101, device: "laptop")), at: 11_000)?.code == .badRequest)
    }

    @Test func theStoredPlaybackKeepsTheVolumesAndOldOnesWithoutThemStillRead() throws {
        var player = try playing()
        try player.run(.volume(percent: 80, device: "laptop"), at: 12_000)
        let json = PlaybackJSON.encode(player.state)
        let decoded = try JSONDecoder().decode(Playback.self, from: Data(json))
        #expect(decoded == player.state)
        var old = player.state
        old.deviceVolumes = nil
        let oldJSON = PlaybackJSON.encode(old)
        #expect(!String(decoding: oldJSON, as: UTF8.self).contains("device_volumes"))
        #expect(try JSONDecoder().decode(Playback.self, from: Data(oldJSON)) == old)
    }
}
