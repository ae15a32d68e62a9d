import Foundation
import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The reference for benchmarks: a plain Redis-backed WebSocket fan-out (nginx with the nchan
/// module), loaded the way `Swarm` loads the daemon. Each user is a channel with
/// `devicesPerUser` WebSocket subscribers (`/sub/<channel>`); messages of `messageBytes` are
/// POSTed to `/pub/<channel>` at `rate` per second over one keep-alive HTTP connection (open
/// loop), each carrying its sequence number; the latency is publish → the last subscriber of the
/// channel received it, measured with the same clock, histogram and report as the swarm.
public struct NchanReference: Sendable {
    /// The same load as the swarm's (users are channels, devices subscribers, commands publishes).
    public let options: Swarm.Options
    /// Bytes per published message (the size of a daemon's `state` message, for a fair comparison).
    public let messageBytes: Int

    public init(load options: Swarm.Options, messageBytes: Int = 600) {
        self.options = options
        self.messageBytes = messageBytes
    }

    /// Receive times per sequence number, for one subscriber.
    final class SubscriberLog: Sendable {
        let channel: Int
        let received = Mutex<[Int: UInt64]>([:])
        let welcomed = Mutex<UInt64?>(nil)

        init(channel: Int) { self.channel = channel }

        func record(_ event: ConnectionEvent) {
            guard case .undecodable(let text) = event else { return }
            let now = DispatchTime.now().uptimeNanoseconds
            // Messages are `{"seq":N,...}`; nchan may send an empty greeting first.
            guard let start = text.range(of: "\"seq\":")?.upperBound else { return }
            let digits = text[start...].prefix { $0.isNumber }
            guard let seq = Int(digits) else { return }
            received.withLock { $0[seq] = now }
        }
    }

    public func run(log: @Sendable (String) -> Void = { _ in }) async throws -> SwarmReport {
        let options = self.options
        var subscriberOptions: [(Int, String?)] = []
        for channel in 0..<options.users {
            for _ in 0..<options.devicesPerUser {
                let index = subscriberOptions.count
                subscriberOptions.append((channel, options.sourceAddresses.isEmpty ? nil : options.sourceAddresses[index % options.sourceAddresses.count]))
            }
        }
        let logs = subscriberOptions.map { SubscriberLog(channel: $0.0) }
        log("subscribing \(logs.count) WebSockets to \(options.users) nchan channels")
        let connectStart = DispatchTime.now().uptimeNanoseconds
        let subscribers = subscriberOptions
        let connections = try await openConcurrently(count: logs.count, limit: options.connectConcurrency) { index in
            let (channel, source) = subscribers[index]
            let subscriber = logs[index]
            var connectionOptions = DeviceConnection.Options(sourceAddress: source)
            connectionOptions.path = "/sub/\(options.userPrefix)-\(channel)"
            return try await DeviceConnection.connect(to: options.server, token: nil, options: connectionOptions) { subscriber.record($0) }
        }
        let connectSeconds = Double(DispatchTime.now().uptimeNanoseconds - connectStart) / 1e9
        try await Task.sleep(for: .milliseconds(500))

        let publisher = try await Publisher.connect(to: options.server)
        let padding = String(repeating: "x", count: max(0, messageBytes - 40))
        let total = Int(options.rate * options.durationSeconds)
        var sent: [(channel: Int, ns: UInt64)] = []
        sent.reserveCapacity(total)
        log("publishing \(total) messages of \(messageBytes) bytes at \(options.rate)/s")
        var generator = SystemRandomNumberGenerator()
        let start = DispatchTime.now().uptimeNanoseconds
        let interval = 1e9 / options.rate
        for seq in 0..<total {
            let due = start + UInt64(Double(seq) * interval)
            let now = DispatchTime.now().uptimeNanoseconds
            if due > now + 1_000_000 { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            let channel = Int.random(in: 0..<options.users, using: &generator)
            sent.append((channel, DispatchTime.now().uptimeNanoseconds))
            publisher.post(path: "/pub/\(options.userPrefix)-\(channel)", body: "{\"seq\":\(seq),\"pad\":\"\(padding)\"}")
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        try await Task.sleep(for: .milliseconds(Int64(options.settleSeconds * 1_000)))

        var fanout = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        let ack = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var byChannel: [Int: [SubscriberLog]] = [:]
        for subscriber in logs { byChannel[subscriber.channel, default: []].append(subscriber) }
        var deliveries = 0
        var complete = 0
        let received = logs.map { ($0.channel, $0.received.withLock { $0 }) }
        var perChannel: [Int: [[Int: UInt64]]] = [:]
        for (channel, times) in received {
            perChannel[channel, default: []].append(times)
            deliveries += times.count
        }
        for (seq, message) in sent.enumerated() {
            let times = (perChannel[message.channel] ?? []).compactMap { $0[seq] }
            guard times.count == options.devicesPerUser, let last = times.max() else { continue }
            complete += 1
            _ = fanout.record(last > message.ns ? (last - message.ns) / 1_000 : 0)
        }
        await publisher.close()
        for connection in connections { await connection.close() }
        var report = SwarmReport(
            users: options.users, devicesPerUser: options.devicesPerUser, commandsSent: sent.count, commandsAnswered: complete,
            durationSeconds: (elapsed * 1_000).rounded() / 1_000,
            throughputPerSecond: elapsed > 0 ? (Double(complete) / elapsed * 10).rounded() / 10 : 0,
            stateDeliveries: deliveries, commandToAck: .init(ack), commandToLastDevice: .init(fanout), errors: [:],
            invariants: InvariantReport())
        report.devicesWelcomed = connections.count
        report.connectSeconds = (connectSeconds * 1_000).rounded() / 1_000
        report.connectsPerSecond = connectSeconds > 0 ? (Double(connections.count) / connectSeconds).rounded() : 0
        return report
    }

    /// One keep-alive HTTP/1.1 connection that POSTs without waiting for answers (they are read and dropped).
    final class Publisher: Sendable {
        let channel: any Channel
        let host: String

        init(channel: any Channel, host: String) {
            self.channel = channel
            self.host = host
        }

        static func connect(to server: ServerAddress) async throws -> Publisher {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Drain())
                    }
                }
                .connect(host: server.host, port: server.port).get()
            return Publisher(channel: channel, host: "\(server.host):\(server.port)")
        }

        func post(path: String, body: String) {
            var request = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
            request.headers.add(name: "Host", value: host)
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "Content-Length", value: String(body.utf8.count))
            let head = request
            let channel = self.channel
            channel.eventLoop.execute {
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            }
        }

        func close() async {
            try? await channel.close()
        }
    }

    final class Drain: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPClientResponsePart
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    }
}
