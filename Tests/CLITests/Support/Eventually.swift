import Foundation

/// Polls an async `condition` every 50 ms for up to `seconds`, without
/// blocking a thread of the test runner's pool.
func eventually(seconds: Double, _ condition: () async -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return await condition()
}
