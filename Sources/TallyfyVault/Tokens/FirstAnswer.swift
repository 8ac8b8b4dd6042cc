import Synchronization

/// The first of two ways to an answer, returned as soon as one has it.
///
/// Neither is awaited past that: the slower one goes on, on a task of its
/// own, and its answer is dropped. That is the point: `work` may wait on a
/// vault lock or the network, which cancelling cannot interrupt.
enum FirstAnswer {
    /// `work`, or `other`, which is told whether `work` has ended (a watcher
    /// stops looking then).
    static func of<T: Sendable>(
        _ work: @escaping @Sendable () async throws -> T,
        or other: @escaping @Sendable (_ workEnded: @escaping @Sendable () -> Bool) async throws -> T
    ) async throws -> T {
        let race = Race<T>()
        return try await withCheckedThrowingContinuation { continuation in
            race.caller.withLock { $0 = continuation }
            Task {
                defer { race.workEnded.withLock { $0 = true } }
                do { race.give(.success(try await work())) } catch { race.give(.failure(error)) }
            }
            Task {
                do { race.give(.success(try await other { race.workEnded.withLock { $0 } })) } catch { race.give(.failure(error)) }
            }
        }
    }

    private final class Race<T: Sendable>: Sendable {
        let caller = Mutex<CheckedContinuation<T, Error>?>(nil)
        let workEnded = Mutex(false)

        /// Only the first answer resumes the caller.
        func give(_ answer: Result<T, Error>) {
            caller.withLock { caller in
                caller?.resume(with: answer)
                caller = nil
            }
        }
    }

    /// `work`, or the first value `ready` has, asked every `pause` while
    /// `work` runs.
    static func of<T: Sendable>(
        _ work: @escaping @Sendable () async throws -> T,
        orWhenReady ready: @escaping @Sendable () async -> T?, pause: Duration = .milliseconds(100)
    ) async throws -> T {
        try await of(work) { workEnded in
            while !workEnded() {
                if let value = await ready() { return value }
                try await Task.sleep(for: pause)
            }
            throw CancellationError()  // dropped: `work` has answered
        }
    }
}
