import NIOCore
import NIOPosix
import RedisClient

/// The users of this node that live on one event loop, and the highest epoch and version seen of
/// each. A user always lives on the same loop (`UserShards.index(of:)`); everything here is touched
/// on that loop only, so nothing is locked.
final class UserShard<Storage: PlaybackStorage>: Sendable {
    let loop: any EventLoop
    /// The users, in `StorageEngine.upkeepSlots` buckets by their id's hash: each upkeep slot takes
    /// one bucket (filtering all users every slot cost more than the upkeep itself at 19,000 idle
    /// connections).
    private let buckets: NIOLoopBoundBox<[[String: UserPlayback<Storage>]]>
    /// The highest epoch and version this node saw of users it no longer has devices of.
    let marks: NIOLoopBoundBox<HighWaterMarks>

    init(loop: any EventLoop, bucketCount: Int) {
        self.loop = loop
        buckets = .makeBoxSendingValue(Array(repeating: [:], count: bucketCount), eventLoop: loop)
        marks = .makeBoxSendingValue(HighWaterMarks(), eventLoop: loop)
    }

    /// `body`'s answer, computed on the loop.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        if loop.inEventLoop { return body() }
        return await withCheckedContinuation { answer in loop.execute { answer.resume(returning: body()) } }
    }

    /// The user, made when there is none. On the loop only.
    func user(_ id: String, bucket: Int, make: () -> UserPlayback<Storage>) -> UserPlayback<Storage> {
        if let user = buckets.value[bucket][id] { return user }
        let user = make()
        buckets.value[bucket][id] = user
        return user
    }

    /// The user if it is here. On the loop only.
    func existing(_ id: String, bucket: Int) -> UserPlayback<Storage>? { buckets.value[bucket][id] }

    /// The users of one bucket. On the loop only.
    func users(in bucket: Int) -> [UserPlayback<Storage>] { Array(buckets.value[bucket].values) }

    /// Every user here. On the loop only.
    var all: [UserPlayback<Storage>] { buckets.value.flatMap(\.values) }

    /// Forgets `user` if it has no device here and nothing running (it is made again on demand).
    /// On the loop only.
    func forgetIfUnused(_ user: UserPlayback<Storage>, bucket: Int) {
        guard buckets.value[bucket][user.userID] === user, user.assumeIsolated({ $0.isUnused }) else { return }
        buckets.value[bucket][user.userID] = nil
    }
}

/// This node's users, each pinned to one event loop by its id: the loop whose Redis connection
/// carries the user's hash slot (`RedisLoopClients`), so that a command's script is written and its
/// reply read on the loop the user lives on.
struct UserShards<Storage: PlaybackStorage>: Sendable {
    let shards: [UserShard<Storage>]
    let bucketCount: Int

    init(group: MultiThreadedEventLoopGroup = .singleton, bucketCount: Int) {
        var shards = group.makeIterator().map { UserShard<Storage>(loop: $0, bucketCount: bucketCount) }
        if shards.isEmpty { shards = [UserShard(loop: group.next(), bucketCount: bucketCount)] }
        self.shards = shards
        self.bucketCount = bucketCount
    }

    /// The shard `user` lives on: its hash slot's, as `RedisLoopClients` picks a connection.
    func shard(of user: String) -> UserShard<Storage> {
        shards[HashSlot.of(RedisKeys(user: user).tag) % shards.count]
    }

    /// The upkeep bucket of `user`.
    func bucket(of user: String) -> Int { Int(UInt(bitPattern: user.hashValue) % UInt(bucketCount)) }
}

/// The highest epoch and version a node has seen per user, so that a user whose state the storage
/// lost (Redis restarted empty, with no PostgreSQL to restore from) starts again above them:
/// devices drop versions they have already seen, and the old holder must hear it lost the lease.
/// Bounded: past `capacity` users, the older half is forgotten.
struct HighWaterMarks: Sendable {
    struct Mark: Sendable, Equatable {
        var epoch: Int64
        var version: Int64
        /// When it was last raised (server ms): restores jump by the time since, like a snapshot's.
        var at: Int64
    }

    static var capacity: Int { 100_000 }
    private var marks: [String: Mark] = [:]

    func mark(of user: String) -> Mark? { marks[user] }

    mutating func raise(_ user: String, epoch: Int64, version: Int64, at now: Int64) {
        guard epoch > 0 || version > 0 else { return }
        let old = marks[user]
        marks[user] = Mark(epoch: max(epoch, old?.epoch ?? 0), version: max(version, old?.version ?? 0), at: now)
        guard marks.count > Self.capacity else { return }
        let cutoff = marks.values.map(\.at).sorted()[marks.count / 2]
        marks = marks.filter { $0.value.at >= cutoff }
    }
}
