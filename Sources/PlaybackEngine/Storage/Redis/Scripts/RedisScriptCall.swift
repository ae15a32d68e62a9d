import RedisClient

/// One call of one of the engine's Lua scripts, with its KEYS and ARGV typed beside the Lua: a
/// type per script, whose stored properties are what the script reads, in order.
protocol RedisScriptCall {
    /// The script's source as it runs on one Redis (`PUBLISH`; `SPUBLISH` on a cluster).
    static var lua: String { get }
    /// KEYS, in the order the Lua reads them.
    var keys: [String] { get }
    /// ARGV, in the order the Lua reads them.
    var arguments: [RedisArgument] { get }
}

/// Lua shared by the scripts that move a lease's deadline in `lease-deadlines`: Redis's clock in
/// ms (one clock for every node's sweep), and a user's deadline `ms` from now. The deadlines key
/// comes last in KEYS and is left out on a Redis Cluster, where it lives in another slot than the
/// user's keys: there `RedisStorage` moves the deadline itself, before the script.
enum DeadlineLua {
    static let functions = """
        local function now_ms() local t = redis.call('TIME'); return t[1] * 1000 + math.floor(t[2] / 1000) end
        local function lapse_in(key, ms, user) if key then redis.call('ZADD', key, now_ms() + tonumber(ms), user) end end

        """
}

/// The loaded scripts of one storage, one per call type, as they run on its Redis.
struct RedisScriptSet: Sendable {
    private let scripts: [ObjectIdentifier: RedisScript]

    init(clustered: Bool, _ types: [any RedisScriptCall.Type]) {
        var scripts: [ObjectIdentifier: RedisScript] = [:]
        for type in types {
            // On a cluster a user's channel is a shard channel, whose subscribers are at the master
            // of the user's slot (`PUBLISH` would reach every node).
            let source = clustered ? type.lua.replacingOccurrences(of: "redis.call('PUBLISH',", with: "redis.call('SPUBLISH',") : type.lua
            scripts[ObjectIdentifier(type)] = RedisScript(source)
        }
        self.scripts = scripts
    }

    /// The script of `call`'s type; a type missing from the set is a programming error.
    func script(for call: some RedisScriptCall) -> RedisScript {
        guard let script = scripts[ObjectIdentifier(type(of: call))] else {
            preconditionFailure("\(type(of: call)) is not in the storage's script set")
        }
        return script
    }
}
