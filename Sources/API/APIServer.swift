import Glibc
import NIOCore
import NIOHTTP1
import NIOPosix

/// The HTTP/1.1 server of Firecracker's API on a Unix socket (SwiftNIO: one event-loop thread). It creates the
/// socket with the invoker's umask, refuses a path that exists (as Firecracker does; a stale socket is the caller's
/// to remove), bounds each request's body, and hands each complete request to the `APIController`.
public final class APIServer {
    /// Firecracker caps request payloads at 51,200 bytes; vmm at 64 KiB.
    public static let maxBodyBytes = 64 << 10

    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    public let socketPath: String

    public struct StartError: Error, CustomStringConvertible { public let description: String }

    public init(socketPath: String, controller: APIController) throws {
        var st = stat()
        if lstat(socketPath, &st) == 0 {
            throw StartError(description: "--api-sock \(socketPath): the path exists (remove a stale socket first)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HTTPHandler(controller: controller))
                }
            }
        do {
            channel = try bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: false).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw StartError(description: "--api-sock \(socketPath): \(error)")
        }
        self.group = group
        self.socketPath = socketPath
    }

    /// Closes the socket and removes its path (vmm made it).
    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        unlink(socketPath)
    }
}

/// One connection: collects a request (head, body up to `maxBodyBytes`, end), asks the controller, writes the
/// response. The pipeline handler in front keeps pipelined requests in order.
final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let controller: APIController
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(controller: APIController) { self.controller = controller }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = h.headers.first(name: "content-length").flatMap { Int($0) }.map { $0 > APIServer.maxBodyBytes } ?? false
        case .body(var buffer):
            guard !tooLarge else { return }
            if body.count + buffer.readableBytes > APIServer.maxBodyBytes {
                tooLarge = true
                body = []
            } else {
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if tooLarge {
                respond(context: context, head: head, .fault(413, "The request body is larger than \(APIServer.maxBodyBytes) bytes"), close: true)
                return
            }
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            controller.handle(method: head.method.rawValue, uri: head.uri, body: body) { response in
                loop.execute {
                    let (handler, context) = bound.value
                    handler.respond(context: context, head: head, response, close: !head.isKeepAlive)
                }
            }
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, _ response: APIResponse, close: Bool) {
        let bytes = Array((response.body ?? "").utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Server", value: "vmm")
        if response.status != 204 { headers.add(name: "Content-Length", value: "\(bytes.count)") }
        if !bytes.isEmpty { headers.add(name: "Content-Type", value: "application/json") }
        if close { headers.add(name: "Connection", value: "close") }
        let responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
        if !bytes.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            written.whenComplete { _ in bound.value.close(promise: nil) }
        }
    }
}
