import ArgumentParser
import Foundation
import TallyfyVault

/// `doctor`: one table of what works and what does not, with a hint per problem.
struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check the install, the vault, its unlock sources, each profile and Tallyfy; change nothing.",
        discussion: """
            One line per check: OK, WARN, FAIL (with a hint) or SKIP. Exit status 0 when all is OK, \
            1 with warnings, 2 with failures. Never prompts; sends no secret unless --login is given \
            (the token URL is probed with a request that names no client).
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Also run the client-credentials flow with the sealed secret (the token is not kept).")
    var login = false
    @Option(help: "text or json.") var format: Format = .text

    func run() async throws {
        ProcessHardening.protect()
        let doctor = Doctor(context: global.context, login: login, installFolder: Self.installFolder())
        let report = await doctor.run()
        switch format {
        case .json:
            Output.line(try Output.json(report))
        case .text:
            let lines = Table.render(report.checks.map { [$0.status.rawValue, $0.check, $0.detail] })
                .split(separator: "\n", omittingEmptySubsequences: false)
            for (index, line) in lines.enumerated() {
                Output.line(String(line))
                if let hint = report.checks[index].hint { Output.line("      hint: \(hint)") }
            }
        }
        throw ExitCode(report.exitStatus)
    }

    /// The folder of this executable.
    static func installFolder() -> String? {
        ThisProgram.path.map { URL(fileURLWithPath: $0).deletingLastPathComponent().path }
    }
}
