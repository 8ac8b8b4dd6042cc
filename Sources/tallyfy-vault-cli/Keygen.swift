import ArgumentParser
import TallyfyVault

/// `keygen PATH`: a new random key file.
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a new random key file (32 bytes, mode 0600); refuses to overwrite.")

    @Argument(help: "Where to write the key file.")
    var path: String

    func run() throws {
        ProcessHardening.protect()
        try KeyFile.generate(at: path)
        Output.note("wrote a new key file to \(path); keep a copy somewhere safe: a vault sealed only for it can't be opened without it")
    }
}
