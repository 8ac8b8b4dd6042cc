import Foundation
import TallyfyVault

// libFuzzer harness (SECURITY.md, "Fuzzing") with six targets, chosen by
// `TALLYFY_FUZZ_TARGET`:
//
//   vault    (the default) the vault parser and the key-file unlock path
//   token    a token endpoint's answer body (`FuzzEntry.tokenResponse`)
//   summary  the clear summary and what keyless `status`/`check` do with it
//            (`FuzzEntry.parseSummary`)
//   mask     `exec --mask`'s masker over random secrets, output and writes,
//            against a naive reference (`FuzzEntry.mask`, `MaskFuzz`)
//   agent    what the agent reads on a connection: the frame, the request's
//            JSON and a token request's checks (`FuzzEntry.agentRequest`)
//   etcd     the etcd v3 gateway's answers as the client reads them: range,
//            put, txn, lease and the watch stream (`FuzzEntry.etcdAnswers`)
//
// `tools/fuzz` builds it with `-sanitize=fuzzer,address -DTALLYFY_FUZZ`:
// libFuzzer then provides `main` and calls `LLVMFuzzerTestOneInput` for every
// input. In any other build (`swift build`) the same target is a replay tool:
//
//     tallyfy-vault-fuzz [--target vault|token|summary|mask|agent|etcd] FILE...
//
// runs the same function once over each file and prints how far it got, so a
// crasher can be replayed under a debugger or checked after a fix.

/// The key file of every test vector: the 32 bytes 0x00..0x1f.
let vectorKeyFile: [UInt8] = (0..<32).map { UInt8($0) }

/// With `TALLYFY_FUZZ_TRACE` set, every stage is written to standard error
/// before it runs and the outcome after it: `tools/fuzz` replays a crasher
/// this way to learn the stage it crashed in. Never set while fuzzing.
let trace: Bool = {
    guard ProcessInfo.processInfo.environment["TALLYFY_FUZZ_TRACE"] != nil else { return false }
    FuzzEntry.stageHook = { stage in
        FileHandle.standardError.write(Data("tallyfy-vault-fuzz: stage \(stage)\n".utf8))
    }
    return true
}()

/// The targets, by the name `TALLYFY_FUZZ_TARGET` (or `--target`) gives.
let targets: [String: @Sendable (Data) -> FuzzEntry.Outcome] = [
    "vault": { FuzzEntry.parseAndOpen($0, keyFile: vectorKeyFile) },
    "token": { FuzzEntry.tokenResponse($0) },
    "summary": { FuzzEntry.parseSummary($0) },
    "mask": { FuzzEntry.mask($0) },
    "agent": { FuzzEntry.agentRequest($0) },
    "etcd": { input in blocking { await FuzzEntry.etcdAnswers(input) } },
]

/// Runs an async target to its end on this thread's behalf: libFuzzer's
/// thread (or the replay loop's) is not one of Swift's pool threads, so
/// waiting here holds none of them.
func blocking(_ body: @escaping @Sendable () async -> FuzzEntry.Outcome) -> FuzzEntry.Outcome {
    let done = DispatchSemaphore(value: 0)
    let outcome = OutcomeBox()
    Task {
        outcome.value = await body()
        done.signal()
    }
    done.wait()
    return outcome.value!
}

/// Carries the outcome from the task to the waiting thread (the semaphore orders the two).
final class OutcomeBox: @unchecked Sendable {
    var value: FuzzEntry.Outcome?
}

/// The target this process runs: set once, before the first input.
nonisolated(unsafe) var targetName = ProcessInfo.processInfo.environment["TALLYFY_FUZZ_TARGET"] ?? "vault"
nonisolated(unsafe) var target: (Data) -> FuzzEntry.Outcome = { _ in fatalError("no fuzz target chosen") }

/// Chooses `targetName`'s function, or says which names exist.
func chooseTarget() -> Bool {
    guard let chosen = targets[targetName] else {
        FileHandle.standardError.write(Data("tallyfy-vault-fuzz: unknown target \"\(targetName)\" (TALLYFY_FUZZ_TARGET): use vault, token, summary, mask, agent or etcd\n".utf8))
        return false
    }
    target = chosen
    return true
}

@discardableResult
func run(_ data: Data) -> FuzzEntry.Outcome {
    _ = trace
    let outcome = target(data)
    if trace {
        let message = outcome.message.isEmpty ? "" : ": \(outcome.message)"
        FileHandle.standardError.write(Data("tallyfy-vault-fuzz: outcome \(outcome.expect) at stage \(outcome.stage)\(message)\n".utf8))
    }
    return outcome
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    run(count == 0 ? Data() : Data(bytes: start, count: count))
    return 0
}

#if TALLYFY_FUZZ
    // SwiftPM links every executable with `--defsym main=<module>_main`, the
    // name it gives the entry point so tests can link executables, which
    // replaces libFuzzer's own `main`. This is that entry point: it starts
    // libFuzzer's driver, as libFuzzer's `main` does. `@_extern(c)` needs
    // `-enable-experimental-feature Extern`, which tools/fuzz passes.
    @_extern(c, "LLVMFuzzerRunDriver")
    func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ testOneInput: @convention(c) (UnsafeRawPointer, Int) -> CInt
    ) -> CInt

    @_cdecl("tallyfy_vault_fuzz_main")
    public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
        guard chooseTarget() else { return 64 }
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
    }
#else
    @main
    struct Replay {
        static func main() {
            var paths = Array(CommandLine.arguments.dropFirst())
            if paths.first == "--target", paths.count >= 2 {
                targetName = paths[1]
                paths.removeFirst(2)
            }
            guard !paths.isEmpty, !paths.contains(where: { $0 == "-h" || $0 == "--help" }) else {
                let usage = """
                    usage: tallyfy-vault-fuzz [--target vault|token|summary|mask|agent|etcd] FILE...
                    Runs a fuzz target once over each file and prints its outcome: vault (the
                    default: parse, open with the key file 0x00..0x1f, read every user token),
                    token (a token endpoint's answer body) or summary (the clear summary's JSON,
                    then what keyless status and check do with it), mask (exec --mask's masker
                    against a naive reference), agent (what the agent reads on a connection) or
                    etcd (the etcd gateway's answers and watch stream). TALLYFY_FUZZ_TARGET chooses
                    it too. tools/fuzz builds the libFuzzer version of these targets.

                    """
                FileHandle.standardError.write(Data(usage.utf8))
                exit(paths.isEmpty ? 64 : 0)
            }
            guard chooseTarget() else { exit(64) }
            var failed = false
            for path in paths {
                guard let data = FileManager.default.contents(atPath: path) else {
                    FileHandle.standardError.write(Data("tallyfy-vault-fuzz: cannot read \(path)\n".utf8))
                    failed = true
                    continue
                }
                let outcome = run(data)
                print("\(path): \(outcome.expect) at stage \(outcome.stage)\(outcome.message.isEmpty ? "" : ": \(outcome.message)")")
            }
            exit(failed ? 66 : 0)
        }
    }
#endif
