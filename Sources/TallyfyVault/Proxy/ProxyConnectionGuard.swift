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
    /// The handler at the front of the pipeline, which writes raw answers.
    weak var watcher: ByteWatcher?
    private let counters: ProxyCounters
    private let listener: ProxyListener
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    private var waitingForHead = true
    private var headStarted = false
    private var responseInFlight = false
    private var answered = false

    init(timeouts: Timeouts, counters: ProxyCounters, listener: ProxyListener) {
        self.timeouts = timeouts
        self.counters = counters
        self.listener = listener
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
        case .head:
            responseInFlight = true
            timer?.cancel()  // an answer as slow as Tallyfy is is not an idle connection
            timer = nil
        case .body: break
        case .end:
            responseInFlight = false
            waitingForHead = true
            headStarted = false
            arm(timeouts.idle, idle: true)
        }
        context.write(data, promise: promise)
    }

    /// A parse error is answered here and goes no further: the request loop
    /// just sees the connection end. (Errors the decoder raises as the
    /// connection closes, or for bytes after its first error, are dropped.)
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parser = error as? HTTPParserError {
            guard context.channel.isActive, !answered else { return }
            counters.count(over: listener, requests: 1, refusals: 1)
            answerAndClose(parser == .headerOverflow ? .headersTooLarge : .malformed)
            return
        }
        if error is ByteToMessageDecoderError { return }
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
        counters.count(over: listener, requests: started ? 1 : 0, refusals: 1)
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
        // Written as bytes at the front of the pipeline: before a request
        // head there is no request for NIO's HTTP handlers to answer.
        guard let raw = watcher?.context else {
            context.close(promise: nil)
            return
        }
        let body = Array(refusal.body.utf8)
        let status = HTTPResponseStatus(statusCode: refusal.status)
        var bytes = context.channel.allocator.buffer(capacity: 160 + body.count)
        bytes.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\nContent-Type: application/json\r\n")
        bytes.writeString("Content-Length: \(body.count)\r\nConnection: close\r\n\r\n")
        bytes.writeBytes(body)
        // A lingering close: stop sending, but read (and drop) what the
        // client is still sending for a moment, so that closing with unread
        // bytes does not reset the connection and destroy the answer before
        // the client reads it.
        let channel = context.channel
        raw.writeAndFlush(NIOAny(bytes)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }
}

/// Tells the guard that bytes arrived, before the decoder sees them.
final class ByteWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private let guardHandler: ProxyConnectionGuard
    private(set) var context: ChannelHandlerContext?

    init(_ guardHandler: ProxyConnectionGuard) {
        self.guardHandler = guardHandler
        guardHandler.watcher = self
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guardHandler.bytesArrived()
        context.fireChannelRead(data)
    }
}
