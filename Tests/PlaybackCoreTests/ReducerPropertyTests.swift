import PlaybackCore
import Testing

/// Random input sequences against the invariants every state must keep.
@Suite("randomized invariants")
struct ReducerPropertyTests {
    static let trackIDs = Fixture.tracks.map(\.id) + ["missing"]
    static let senders: [String?] = ["phone", "laptop", "speaker", nil]

    static func randomInput(_ rng: inout SplitMix64, state: Playback) -> Input {
        func pick<T>(_ values: [T]) -> T { values[Int(rng.next() % UInt64(values.count))] }
        let entry = state.upcoming.isEmpty || rng.next() % 5 == 0 ? "e\(rng.next() % 50)" : pick(state.upcoming).entry
        let position = Int64(rng.next() % 260_000) - 20_000
        switch rng.next() % 19 {
        case 0: return .command(.play(.init(trackID: pick(trackIDs))))
        case 1: return .command(.play(.init(trackIDs: (0..<(1 + rng.next() % 6)).map { _ in pick(trackIDs) })))
        case 2: return .command(.play(.init(context: Fixture.album, device: pick(["phone", "laptop", "speaker"]))))
        case 3: return .command(pick([.pause, .resume, .next, .previous, .queueClear]))
        case 4: return .command(.seek(positionMs: position))
        case 5: return .command(.volume(percent: Int(rng.next() % 130) - 10))
        case 6: return .command(.setRepeat(pick(RepeatMode.allCases)))
        case 7: return .command(.setShuffle(rng.next() % 2 == 0))
        case 8: return .command(.queueAdd(trackID: pick(trackIDs), at: pick([.next, .end])))
        case 9: return .command(.queueRemove(entry: entry))
        case 10: return .command(.queueMove(entry: entry, to: Int(rng.next() % 8) - 2))
        case 11: return .command(.transfer(device: pick(["phone", "laptop", "speaker"]), play: pick([nil, true, false])))
        case 12, 13:
            return .report(
                epoch: state.epoch - Int64(rng.next() % 2), positionMs: position, isPlaying: rng.next() % 3 != 0,
                trackID: state.current?.track.id ?? "t1")
        case 14, 15: return .trackEnded(epoch: state.epoch, trackID: state.current?.track.id ?? "t1")
        case 16: return .release
        case 17: return .confirmDeadline(epoch: state.epoch - Int64(rng.next() % 2))
        default: return .expire(device: pick(["phone", "laptop"]))
        }
    }

    @Test(arguments: 0..<40)
    func randomSequencesKeepTheInvariants(seed: UInt64) {
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9 &+ 1)
        var state = Playback.initial
        var now: Int64 = 1_000
        for _ in 0..<400 {
            now += Int64(rng.next() % 30_000)
            let input = Self.randomInput(&rng, state: state)
            let sender = Self.senders[Int(rng.next() % UInt64(Self.senders.count))]
            var environment = Fixture.env(now, from: sender, seed: rng.next())
            environment.confirmingDevices = ["laptop"]
            let ifVersion: Int64? = rng.next() % 10 == 0 ? state.version - 1 : nil
            do {
                let t = try Fixture.reducer.apply(input, to: state, environment: environment, ifVersion: ifVersion)
                let next = t.playback
                #expect(next.version == state.version + (t.changed ? 1 : 0), "version rises by one exactly on a change")
                #expect(next.epoch >= state.epoch, "epoch never goes back")
                #expect((next.epoch != state.epoch) == (next.activeDevice != state.activeDevice), "epoch moves with the lease")
                #expect((t.lease != nil) == (next.activeDevice != state.activeDevice))
                #expect(t.changed || next == state)
                state = next
            } catch {
                #expect(error.code != .internal, "\(error)")
            }
            let duration = state.current?.track.durationMs ?? 0
            #expect((0...duration).contains(state.positionMs), "position within the track")
            #expect((0...duration).contains(state.position(at: now + Int64(rng.next() % 500_000))))
            let entries = state.upcoming.map(\.entry) + (state.current.map { [$0.entry] } ?? [])
            #expect(Set(entries).count == entries.count, "entry ids are unique")
            #expect((0...100).contains(state.volume))
            #expect(state.userQueue.count <= PlaybackLimits().queueCapacity)
            #expect(Set(state.playOrder) == Set(state.contextOrder) && state.playOrder.count == state.contextOrder.count)
            #expect(state.cursor >= -1 && state.cursor < max(state.playOrder.count, 1))
            #expect(state.activeDevice != nil || !state.isPlaying, "nothing plays without an active device")
            if let pending = state.pendingTransfer {
                #expect(state.activeDevice == "laptop" && pending.source != "laptop", "only a confirming target waits")
            }
        }
    }
}
