import Foundation
import NIOCore
import NIOHTTP1

/// The proxy's answers to bad HTTP that never reaches the request loop:
/// malformed requests (400), oversized headers (431), a request head or body
/// that does not arrive in time (408, the slow-loris attack), each in
/// Tallyfy's error shape and followed by closing this connection only. An
/// idle keep-alive connection is closed without an answer after
/// `idleTimeout`, as servers do.
///
/// It sits after NIO's HTTP decoder (which refuses a `Content-Length` beside
/// a `Transfer-Encoding`, and headers over the decoder's limits) and sees
/// the raw bytes through `ByteWatcher`, placed before the decoder, so it
/// can tell a client that started a request and stalled from one that sent
/// nothing.
final class ProxyConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    struct Timeouts {
        /// From a request's first byte to its complete head.
        var head: TimeAmount
        /// From a head to the end of its body.
        var body: TimeAmount
        /// Between requests on a kept-alive connection.
        var idle: TimeAmount
    }

    private let timeouts: Timeouts
    private let counters: ProxyCounters
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var waitingForHead = true
    private var headStarted = false
    private var responseInFlight = false
    private var answered = false

    init(timeouts: Timeouts, counters: ProxyCounters) {
        self.timeouts = timeouts
        self.counters = counters
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { arm(timeouts.idle, idle: true) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(timeouts.idle, idle: true)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    /// Called by `ByteWatcher` for every read, before decoding.
    func bytesArrived() {
        guard waitingForHead, !headStarted else { return }
        headStarted = true
        arm(timeouts.head, idle: false)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            waitingForHead = false
            headStarted = false
            arm(timeouts.body, idle: false)
        case .body: break
        case .end:
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where (100..<200).contains(head.status.code): break
        case .head: responseInFlight = true
        case .body: break
        case .end:
            responseInFlight = false
            waitingForHead = true
            headStarted = false
            arm(timeouts.idle, idle: true)
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parser = error as? HTTPParserError {
            counters.count {
                $0.requests += 1
                $0.refusals += 1
            }
            answerAndClose(parser == .headerOverflow ? .headersTooLarge : .malformed)
        }
        context.fireErrorCaught(error)
    }

    private func arm(_ amount: TimeAmount, idle: Bool) {
        timer?.cancel()
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: amount) { bound.value.expired(idle: idle) }
    }

    private func expired(idle: Bool) {
        guard let context else { return }
        // An idle connection just goes (a 408 there would be read as the
        // answer to the client's next request).
        if idle && !headStarted {
            context.close(promise: nil)
            return
        }
        let started = waitingForHead
        counters.count {
            $0.requests += started ? 1 : 0
            $0.refusals += 1
        }
        answerAndClose(.requestTimeout)
    }

    /// Answers `refusal` when no other answer has begun, then closes.
    private func answerAndClose(_ refusal: ProxyRefusal) {
        guard let context, !answered else { return }
        answered = true
        timer?.cancel()
        guard !responseInFlight else {
            context.close(promise: nil)
            return
        }
        let body = context.channel.allocator.buffer(string: refusal.body)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: refusal.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Tells the guard that bytes arrived, before the decoder sees them.
final class ByteWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let guardHandler: ProxyConnectionGuard

    init(_ guardHandler: ProxyConnectionGuard) { self.guardHandler = guardHandler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guardHandler.bytesArrived()
        context.fireChannelRead(data)
    }
}
