import AsyncHTTPClient

extension HTTPClient.Configuration {
    /// Where every HTTP client of the vault starts (Tallyfy, etcd, the
    /// proxy's upstream): AsyncHTTPClient's defaults, but HTTP/1.1 only.
    ///
    /// Its HTTP/2 handler stops the whole process when a stream is reset at
    /// the wrong moment: it force-unwraps a request it has already dropped
    /// (swift-server/async-http-client#922, open in 1.37). CI met it once, an
    /// `init` against an etcd cluster over TLS that refused a wrong client
    /// certificate. Nothing here gains from HTTP/2's multiplexing: a token
    /// request uses one connection of its own, and etcd calls come one at a time.
    static func http1Only() -> Self {
        var configuration = Self()
        configuration.httpVersion = .http1Only
        return configuration
    }
}
