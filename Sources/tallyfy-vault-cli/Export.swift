import ArgumentParser
import Foundation
import TallyfyVault

/// `export`: the `exec` variables, printed for `eval`, a `.env` file or JSON.
struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the variables exec would set: for eval (sh), a .env file (dotenv) or JSON.",
        discussion: "The output contains the token: prefer `exec`, which never writes it anywhere.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var options: TokenOptions
    @Option(help: "sh, dotenv or json.") var format: ExportFormat = .sh

    func run() async throws {
        let grant = try await options.grant(global)
        Output.line(try format.render(ChildEnvironment.exported(for: grant)))
    }
}

extension ExportFormat: ExpressibleByArgument {}
