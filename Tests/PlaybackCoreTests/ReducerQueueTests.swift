import PlaybackCore
import Testing

@Suite("queue")
struct ReducerQueueTests {
    func player() throws -> Player {
        var player = Player()
        try player.run(.play(.init(trackID: "t1", context: Fixture.album)), at: 0)
        return player
    }

    @Test func addAtEndAndNextWithStableEntryIdsAndDuplicates() throws {
        var player = try player()
        let first = try player.run(.queueAdd(trackID: "t8", at: .end), at: 0).entry
        let second = try player.run(.queueAdd(trackID: "t8", at: .end), at: 0).entry
        let third = try player.run(.queueAdd(trackID: "t7", at: .next), at: 0).entry
        #expect(first != nil && second != nil && first != second)
        #expect(player.state.userQueue.map(\.entry) == [third, first, second].compactMap { $0 })
        #expect(player.upcomingIDs == ["t7", "t8", "t8", "t2", "t3", "t4", "t5"])
        #expect(player.state.upcoming.prefix(3).allSatisfy { $0.source == .queue })
        #expect(player.last?.queueChanged == true)
    }

    @Test func addRejectsUnknownAndUnlicensedTracks() throws {
        var player = try player()
        #expect(player.reject(.command(.queueAdd(trackID: "zz", at: .end)), at: 0)?.code == .trackNotFound)
        #expect(player.reject(.command(.queueAdd(trackID: "tR", at: .end)), at: 0)?.code == .unavailableInRegion)
    }

    @Test func queueHasACapacity() throws {
        var player = Player(reducer: PlaybackReducer(catalog: Fixture.catalog, limits: .init(queueCapacity: 3)))
        for _ in 0..<3 { try player.run(.queueAdd(trackID: "t2", at: .end), at: 0) }
        #expect(player.reject(.command(.queueAdd(trackID: "t2", at: .end)), at: 0)?.code == .queueFull)
    }

    @Test func removeWorksOnUserAndContextEntries() throws {
        var player = try player()
        let queued = try #require(try player.run(.queueAdd(trackID: "t8", at: .end), at: 0).entry)
        try player.run(.queueRemove(entry: queued), at: 0)
        let t3 = try #require(player.state.upcoming.first { $0.track.id == "t3" }).entry
        try player.run(.queueRemove(entry: t3), at: 0)
        #expect(player.upcomingIDs == ["t2", "t4", "t5"])
        try player.run(.setShuffle(true), at: 0)
        try player.run(.setShuffle(false), at: 0)
        #expect(player.upcomingIDs == ["t2", "t4", "t5"])
    }

    @Test func removeOfAnUnknownOrPlayedEntryIsEntryNotFound() throws {
        var player = try player()
        let current = try #require(player.state.current?.entry)
        #expect(player.reject(.command(.queueRemove(entry: "e999")), at: 0)?.code == .entryNotFound)
        #expect(player.reject(.command(.queueRemove(entry: current)), at: 0)?.code == .entryNotFound)
    }

    @Test(arguments: [(-5, 0), (0, 0), (1, 1), (2, 2), (99, 2)])
    func moveClampsTheTargetIndex(to: Int, expectedIndex: Int) throws {
        var player = try player()
        let ids = try (0..<3).map { _ in try #require(try player.run(.queueAdd(trackID: "t8", at: .end), at: 0).entry) }
        try player.run(.queueMove(entry: ids[1], to: to), at: 0)
        #expect(player.state.userQueue.firstIndex { $0.entry == ids[1] } == expectedIndex)
    }

    @Test func moveOfAContextEntryIsEntryNotFound() throws {
        var player = try player()
        let context = try #require(player.state.upcoming.first).entry
        #expect(player.reject(.command(.queueMove(entry: context, to: 0)), at: 0)?.code == .entryNotFound)
    }

    @Test func clearDropsOnlyUserQueuedEntries() throws {
        var player = try player()
        try player.run(.queueAdd(trackID: "t8", at: .end), at: 0)
        try player.run(.queueClear, at: 0)
        #expect(player.upcomingIDs == ["t2", "t3", "t4", "t5"])
        #expect(try !player.run(.queueClear, at: 0).changed)
    }

    @Test func nonQueueChangesDoNotMarkTheQueueChanged() throws {
        var player = try player()
        let t = try player.run(.volume(percent: 3), at: 0)
        #expect(t.changed && !t.queueChanged)
    }
}
