import NIOCore
import NIOPosix

/// One TCP connection to Redis. Commands may be sent concurrently, from any thread; they are
/// pipelined and answered in order. A command without a reply within the timeout closes the
/// connection (failing everything pending), since the replies can no longer be matched.
public final class RedisConnection: Sendable {
    let channel: any Channel
    let configuration: RedisConfiguration

    private init(channel: any Channel, configuration: RedisConfiguration) {
        self.channel = channel
        self.configuration = configuration
    }

    public var isActive: Bool { channel.isActive }

    public static func connect(
        _ configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onPush: (@Sendable (RESPValue) -> Void)? = nil, pushKinds: Set<String>? = nil
    ) async throws -> RedisConnection {
        try await connectFuture(configuration, group: group, onPush: onPush, pushKinds: pushKinds).get()
    }

    /// Connects and says who it is (AUTH, SELECT, CLIENT SETNAME) without a task: the future
    /// completes on the connection's event loop.
    public static func connectFuture(
        _ configuration: RedisConfiguration, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        onPush: (@Sendable (RESPValue) -> Void)? = nil, pushKinds: Set<String>? = nil
    ) -> EventLoopFuture<RedisConnection> {
        ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(configuration.connectTimeoutMs))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        RedisChannelHandler(
                            timeoutMs: configuration.commandTimeoutMs, onPush: onPush, pushKinds: pushKinds ?? RedisChannelHandler.messageKinds))
                }
            }
            .connect(host: configuration.host, port: configuration.port)
            .flatMapErrorThrowing { error in
                throw RedisError(.unavailable, "cannot connect to \(configuration.host):\(configuration.port): \(error)")
            }
            .flatMap { channel in
                let connection = RedisConnection(channel: channel, configuration: configuration)
                var greeting: [[RedisArgument]] = []
                if let password = configuration.password {
                    greeting.append(configuration.username.map { ["AUTH", .string($0), .string(password)] } ?? ["AUTH", .string(password)])
                }
                if configuration.database != 0 { greeting.append(["SELECT", .integer(Int64(configuration.database))]) }
                if let name = configuration.clientName { greeting.append(["CLIENT", "SETNAME", .string(name)]) }
                var said = channel.eventLoop.makeSucceededVoidFuture()
                for command in greeting {
                    said = said.flatMap { connection.sendRawFuture(command) }.flatMapThrowing { reply in
                        if case .error(let message) = reply { throw RedisError(.server, message) }
                    }
                }
                return said.map { connection }.flatMapError { error in
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
    }

    /// Sends a command; an error reply throws `RedisError(.server, …)`.
    public func send(_ arguments: [RedisArgument]) async throws -> RESPValue {
        let reply = try await sendRaw(arguments)
        if case .error(let message) = reply { throw RedisError(.server, message) }
        return reply
    }

    /// Sends a command and returns the reply as is (error replies included).
    public func sendRaw(_ arguments: [RedisArgument]) async throws -> RESPValue {
        try await sendRawFuture(arguments).get()
    }

    /// Sends a command without a task: the reply completes the future on the connection's event
    /// loop (error replies included). Written inline when called on that loop.
    public func sendRawFuture(_ arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        var bytes = channel.allocator.buffer(capacity: 64)
        RESPEncoder.encode(arguments, into: &bytes)
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        // A write that never reaches the handler (the channel closed after `isActive` was checked)
        // fails here; the handler fails the promise in every other case (closed, timed out).
        // Completing twice is a no-op.
        channel.writeAndFlush(RedisRequest(bytes: bytes, promise: promise)).whenFailure { error in
            promise.fail(RedisError(.connectionClosed, "the command was not sent: \(error)"))
        }
        return promise.futureResult
    }

    /// `ASKING` and the command, back to back (nothing else between them on this connection):
    /// the reply of the command, as is.
    func sendAskingFuture(_ arguments: [RedisArgument]) -> EventLoopFuture<RESPValue> {
        let loop = channel.eventLoop
        if loop.inEventLoop {
            let asking = sendRawFuture(["ASKING"])
            let reply = sendRawFuture(arguments)
            return asking.and(reply).map { $0.1 }
        }
        return loop.flatSubmit { self.sendAskingFuture(arguments) }
    }

    /// Writes a command whose answer arrives as a push (see `RedisRequest.expectsReply`).
    func sendWithoutReply(_ arguments: [RedisArgument]) -> EventLoopFuture<Void> {
        var bytes = channel.allocator.buffer(capacity: 64)
        RESPEncoder.encode(arguments, into: &bytes)
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        channel.writeAndFlush(RedisRequest(bytes: bytes, promise: promise, expectsReply: false)).whenFailure { error in
            promise.fail(RedisError(.connectionClosed, "the command was not sent: \(error)"))
        }
        return promise.futureResult.map { _ in }
    }

    public func close() async {
        try? await channel.close()
    }
}
