import Foundation
import TallyfyVaultCore

#if canImport(Glibc)
    import Glibc
#endif

/// The report: every check, and the exit status `check` would use
/// (0 all OK, 1 warnings, 2 failures).
package struct DoctorReport: Sendable, Encodable {
    package var checks: [DoctorCheck]

    package var worst: DoctorCheck.Level { checks.map(\.status).max() ?? .ok }

    package var exitStatus: Int32 {
        switch worst {
        case .ok, .skip: 0
        case .warn: 1
        case .fail: 2
        }
    }

    private enum CodingKeys: String, CodingKey { case checks, status }

    package func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(checks, forKey: .checks)
        try container.encode(worst == .skip ? DoctorCheck.Level.ok : worst, forKey: .status)
    }
}

/// `tallyfy-vault doctor`: what a user runs when something is wrong.
///
/// It reads and asks; it changes nothing. It never prompts, and it sends no
/// secret unless `login` is set: the token URL is probed with a token
/// request that names no client (a real token endpoint answers that with an
/// OAuth error, a wrong URL with 404, 405 or a redirect), and when the
/// profile's URL is not a token endpoint, the URLs Tallyfy documents are
/// probed the same way so the hint can name one that is. With `login` the
/// client-credentials flow runs for real and the token is thrown away. A
/// sealed user token, if any, is checked with `GET {api}/me`, as Tallyfy's
/// own CLI checks tokens.
package struct Doctor: Sendable {
    package var context: CommandContext
    package var login: Bool
    /// The folder of the running `tallyfy-vault-cli`, for the install check.
    package var installFolder: String?
    /// The HTTP timeout per request, short so that `doctor` itself answers quickly.
    package var requestTimeout: Duration

    package init(context: CommandContext, login: Bool, installFolder: String?, requestTimeout: Duration = .seconds(10)) {
        self.context = context
        self.login = login
        self.installFolder = installFolder
        self.requestTimeout = requestTimeout
    }

    package func run() async -> DoctorReport {
        var checks: [DoctorCheck] = []
        checks += installChecks()
        let (fileChecks, vaultReadable) = await vaultFileChecks()
        checks += fileChecks
        checks += pkcs11Check()
        let (unlockChecks, vault) = vaultReadable ? await unlock() : ([DoctorCheck("unlock", .skip, "not checked: no readable vault")], nil)
        checks += unlockChecks
        if let vault {
            let client = TallyfyClient(
                connectTimeout: .seconds(5), requestTimeout: requestTimeout, retry: .none,
                totalTimeout: requestTimeout)
            for name in vault.content.profiles.keys.sorted() where context.explicitProfile == nil || name == context.explicitProfile {
                checks += await profileChecks(name, profile: vault.content.profiles[name]!, vault: vault, client: client)
            }
            if vault.content.profiles.isEmpty {
                checks.append(DoctorCheck("profiles", .warn, "the vault holds no credentials",
                                          hint: "store them with `tallyfy-vault credentials set --org ORG_ID --client-id ID`"))
            } else if let wanted = context.explicitProfile, vault.content.profiles[wanted] == nil {
                checks.append(DoctorCheck("profile \(wanted)", .fail, "no credentials for profile \"\(wanted)\"",
                                          hint: "store them with `tallyfy-vault --profile \(wanted) credentials set --org ORG_ID --client-id ID`"))
            }
            await client.shutdown()
        } else if vaultReadable, let summary = try? await context.store.summary() {
            // No key: the expiries are still in the clear summary.
            let now = VaultClock.now(environment: context.environment)
            for (name, profile) in summary.profiles.sorted(by: { $0.key < $1.key })
            where context.explicitProfile == nil || name == context.explicitProfile {
                let application = profile.applicationTokenExpiresAt.map { SealedToken(value: "", expiresAt: $0, obtainedAt: $0) }
                checks.append(expiryCheck("profile \(name): application token", application, now: now,
                                          warnBefore: 48 * 3600, renew: "tallyfy-vault login"))
                if let earliest = profile.earliestUserTokenExpiresAt {
                    var check = expiryCheck("profile \(name): user tokens", SealedToken(value: "", expiresAt: earliest, obtainedAt: earliest),
                                            now: now, warnBefore: 14 * 86_400, renew: "tallyfy-vault users token EMAIL")
                    check.detail = "\(profile.userTokenCount) sealed; earliest " + check.detail
                    checks.append(check)
                }
            }
        }
        checks.append(agentCheck())
        return DoctorReport(checks: checks)
    }

    // MARK: - Install

    func installChecks() -> [DoctorCheck] {
        guard let folder = installFolder else {
            return [DoctorCheck("install", .warn, "could not tell where this program runs from")]
        }
        var checks: [DoctorCheck] = []
        // The launcher that goes with this CLI, and what that launcher would
        // run: the layouts (`InstallLayout`) and checks the launcher itself uses.
        let launcher = InstallLayout.launcher(forCLI: folder + "/" + InstallLayout.cliName)
        let launcherFolder = (launcher as NSString).deletingLastPathComponent
        if access(launcher, X_OK) == 0 {
            checks.append(DoctorCheck("install: launcher", .ok, launcher))
            switch InstallLayout.findCLI(launcher: realpath(launcher)) {
            case .found(let cli):
                checks.append(DoctorCheck("install: cli", .ok, cli))
            case .notFound(let expected):
                checks.append(DoctorCheck("install: cli", .fail, "the launcher finds no CLI: looked for \(expected.joined(separator: " and "))",
                    hint: "reinstall with `tools/install`"))
            case .unsafe(let path, let reason):
                checks.append(DoctorCheck("install: cli", .fail, "the launcher refuses to run \(path): \(reason)",
                    hint: "reinstall with `tools/install`, or fix its owner and mode"))
            }
        } else {
            checks.append(DoctorCheck("install: launcher", .fail, "\(launcher) is missing or not executable",
                hint: "install with `tools/install` (PREFIX/bin/tallyfy-vault and PREFIX/libexec/tallyfy-vault/tallyfy-vault-cli), "
                    + "or keep tallyfy-vault and tallyfy-vault-cli together in one folder"))
        }
        // Which `tallyfy-vault` a shell would run.
        let onPath = (context.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            .first { access($0 + "/tallyfy-vault", X_OK) == 0 }
        if let onPath {
            let same = realpath(onPath + "/tallyfy-vault") == realpath(launcher)
            checks.append(same
                ? DoctorCheck("install: PATH", .ok, "tallyfy-vault on PATH is this one (\(onPath))")
                : DoctorCheck("install: PATH", .warn, "tallyfy-vault on PATH is \(onPath)/tallyfy-vault, not this one in \(launcherFolder)",
                              hint: "remove the other copy or put \(launcherFolder) first on PATH; versions may differ"))
        } else {
            checks.append(DoctorCheck("install: PATH", .warn, "tallyfy-vault is not on PATH",
                                      hint: "add \(launcherFolder) to PATH, or install with `tools/install`"))
        }
        return checks
    }

    private func realpath(_ path: String) -> String {
        guard let resolved = Glibc.realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    // MARK: - Vault file

    func vaultFileChecks() async -> ([DoctorCheck], Bool) {
        let store = context.store
        var (checks, readable) = await store.storageChecks()
        guard readable else { return (checks, false) }
        if let slots = try? await store.slots() {
            let text = slots.map { "\($0.label) (\($0.kind.name))" }.joined(separator: ", ")
            checks.append(DoctorCheck("unlock slots", .ok, text))
        }
        checks += await generationCheck(store)
        return (checks, true)
    }

    /// The vault's generation beside the newest this machine has seen: a
    /// lower one is what every command refuses as a rollback.
    func generationCheck(_ store: VaultStore) async -> [DoctorCheck] {
        guard let summary = try? await store.summary(), let generation = summary.generation, let id = summary.vaultID else {
            return []
        }
        guard let seen = store.rememberedGeneration(of: id) else {
            return [DoctorCheck("generation", .warn, "\(generation); this machine has nowhere to remember generations, so a rollback goes unnoticed here",
                                hint: "set HOME or XDG_STATE_HOME")]
        }
        if generation < seen {
            return [DoctorCheck("generation", .fail, "\(generation), older than \(seen), which this machine has seen: the vault was rolled back or restored from a backup",
                                hint: "put the newer vault back; if you restored this one on purpose, run one command with --accept-rollback")]
        }
        return [DoctorCheck("generation", .ok, "\(generation) (this machine has seen \(seen == 0 ? "none before" : String(seen)))")]
    }

    /// A PKCS#11 URI given (`--pkcs11`, `TALLYFY_VAULT_PKCS11_URI`): the
    /// module loads and the token with the key's public half is present.
    /// Needs no PIN and decrypts nothing; the unlock check does that when a
    /// PIN file is given.
    func pkcs11Check() -> [DoctorCheck] {
        guard let uri = context.sources.pkcs11 else { return [] }
        do {
            let token = try Pkcs11Token(uri: try Pkcs11URI(parsing: uri), environment: context.environment)
            return [DoctorCheck("pkcs11 token", .ok, try token.diagnose())]
        } catch let error as VaultError {
            return [DoctorCheck("pkcs11 token", .fail, error.message, hint: error.hint)]
        } catch {
            return [DoctorCheck("pkcs11 token", .fail, "the PKCS#11 token could not be checked")]
        }
    }

    // MARK: - Unlocking

    /// Which unlock sources are present, and the first that opens the vault.
    /// Never prompts: with no source, the checks that need a key are skipped.
    func unlock() async -> ([DoctorCheck], UnlockedVault?) {
        let secrets: [UnlockSecret]
        do {
            secrets = try context.sources.available()
        } catch let error as VaultError {
            return ([DoctorCheck("unlock sources", .fail, error.message, hint: error.hint)], nil)
        } catch {
            return ([DoctorCheck("unlock sources", .fail, "an unlock source could not be read")], nil)
        }
        guard !secrets.isEmpty else {
            return ([DoctorCheck("unlock sources", .warn, "none present (commands would prompt on a terminal); profiles not checked",
                                 hint: "set TALLYFY_VAULT_KEY_FILE, TALLYFY_VAULT_PASSPHRASE_FILE or TALLYFY_VAULT_PKCS11_URI with TALLYFY_VAULT_PKCS11_PIN_FILE for unattended use")], nil)
        }
        var checks = [DoctorCheck("unlock sources", .ok, secrets.map(\.origin).joined(separator: ", "))]
        var lastError: VaultError?
        for secret in secrets {
            do {
                let vault = try await context.store.open(with: [secret])
                checks.append(DoctorCheck("unlock", .ok, "\(secret.origin) opens the vault"))
                return (checks, vault)
            } catch let error as VaultError {
                lastError = error
            } catch {}
        }
        checks.append(DoctorCheck("unlock", .fail, lastError?.message ?? "no unlock source opens the vault",
                                  hint: lastError?.hint ?? "check the key file or passphrase against `tallyfy-vault keys list`"))
        return (checks, nil)
    }

    // MARK: - Profiles

    func profileChecks(_ name: String, profile: Profile, vault: UnlockedVault, client: TallyfyClient) async -> [DoctorCheck] {
        let now = VaultClock.now(environment: context.environment)
        var checks: [DoctorCheck] = []
        let label = "profile \(name)"
        let warnings = TallyfyIdentifiers.warnings(orgID: profile.orgID, clientID: profile.clientID)
        if warnings.isEmpty {
            checks.append(DoctorCheck("\(label): credentials", .ok, "org \(profile.orgID), client \(profile.clientID), secret set \(ChildEnvironment.rfc3339(profile.secretSetAt))"))
        } else {
            checks.append(DoctorCheck("\(label): credentials", .warn, warnings.joined(separator: "; "),
                                      hint: "fine for the emulator; for Tallyfy use the IDs Tallyfy Support sent (`tallyfy-vault credentials set`)"))
        }

        // The token URL, without a secret.
        if let url = URL(string: profile.tokenURL) {
            let probe = await client.probeTokenEndpoint(url)
            checks.append(await tokenURLCheck(label, url: profile.tokenURL, probe: probe, client: client))
        }

        if login {
            do {
                let issued = try await client.applicationToken(
                    tokenURL: URL(string: profile.tokenURL)!, clientID: profile.clientID, clientSecret: profile.clientSecret, now: now)
                checks.append(DoctorCheck("\(label): login", .ok,
                                          "Tallyfy issued a token valid until \(ChildEnvironment.rfc3339(issued.expiresAt)) (not sealed)"))
            } catch let error as VaultError {
                checks.append(DoctorCheck("\(label): login", .fail, error.message, hint: error.hint))
            } catch {
                checks.append(DoctorCheck("\(label): login", .fail, "the token request failed"))
            }
        } else {
            checks.append(DoctorCheck("\(label): login", .skip, "not tried: --login sends the client secret"))
        }

        checks.append(expiryCheck("\(label): application token", profile.applicationToken, now: now,
                                  warnBefore: 48 * 3600, renew: "tallyfy-vault login"))
        let users = (try? vault.userTokens(profile: name)) ?? []
        if users.isEmpty {
            checks.append(DoctorCheck("\(label): user tokens", .ok, "none sealed"))
        } else {
            let earliest = users.min { $0.token.expiresAt < $1.token.expiresAt }!
            var check = expiryCheck("\(label): user tokens", earliest.token, now: now, warnBefore: 14 * 86_400,
                                    renew: "tallyfy-vault users token \(earliest.email)")
            check.detail = "\(users.count) sealed; earliest \(NewUser.quoted(earliest.email)): " + check.detail
            checks.append(check)
            // GET /me with a valid user token, as Tallyfy's tools check one.
            if let valid = users.first(where: { TokenPolicy.isValid($0.token, now: now) }), let api = URL(string: profile.apiURL) {
                checks.append(await meCheck(label, user: valid, apiURL: api, client: client))
            }
        }
        return checks
    }

    private func tokenURLCheck(_ label: String, url: String, probe: TokenEndpointProbe, client: TallyfyClient) async -> DoctorCheck {
        let name = "\(label): token URL"
        switch probe {
        case .tokenEndpoint(let status, let code):
            return DoctorCheck(name, .ok, "\(url) answers as an OAuth token endpoint (\(status), \(code); no secret sent)")
        case .troubled(let status):
            return DoctorCheck(name, .warn, "\(url) answered \(status)", hint: "Tallyfy may be busy or down; try again later")
        case .unreachable(let reason):
            return DoctorCheck(name, .fail, reason, hint: "check the network and the URL (`tallyfy-vault credentials show`)")
        case .notTokenEndpoint(let status):
            // Try the documented URLs, https and Tallyfy's hosts only, so the
            // hint can name one that answers as a token endpoint.
            var working: [String] = []
            let host = URL(string: url)?.host?.lowercased() ?? ""
            let onTallyfy = host == "tallyfy.com" || host.hasSuffix(".tallyfy.com")
            for candidate in TallyfyClient.documentedTokenURLs where onTallyfy && candidate != url {
                if case .tokenEndpoint = await client.probeTokenEndpoint(URL(string: candidate)!) { working.append(candidate) }
            }
            let hint = working.isEmpty
                ? TallyfyClient.tokenURLHint
                : "these documented URLs answer as token endpoints: \(working.joined(separator: ", ")); "
                    + "set one with `tallyfy-vault credentials set --token-url URL …`"
            return DoctorCheck(name, .fail, "\(url) is not an OAuth token endpoint (it answered \(status))", hint: hint)
        }
    }

    private func meCheck(_ label: String, user: UserTokenRecord, apiURL: URL, client: TallyfyClient) async -> DoctorCheck {
        let name = "\(label): GET /me"
        do {
            switch try await client.me(apiURL: apiURL, token: user.token.value) {
            case .user(let email):
                return DoctorCheck(name, .ok, "the token of \(NewUser.quoted(user.email)) acts as \(email)")
            case .refused(let status, let detail):
                return DoctorCheck(name, status == 429 || status >= 500 ? .warn : .fail,
                                   "Tallyfy answered \(detail) for the token of \(NewUser.quoted(user.email))",
                                   hint: "issue a new one with `tallyfy-vault users token \(user.email)`")
            }
        } catch let error as VaultError {
            return DoctorCheck(name, .warn, error.message, hint: error.hint)
        } catch {
            return DoctorCheck(name, .warn, "the /me request failed")
        }
    }

    private func expiryCheck(_ name: String, _ token: SealedToken?, now: Date, warnBefore: TimeInterval, renew: String) -> DoctorCheck {
        guard let token else {
            return DoctorCheck(name, .warn, "none sealed", hint: "get one with `\(renew)`")
        }
        let left = token.expiresAt.timeIntervalSince(now)
        let until = ChildEnvironment.rfc3339(token.expiresAt)
        if left <= 0 {
            return DoctorCheck(name, .fail, "expired at \(until)", hint: "renew it with `\(renew)`")
        }
        if left < warnBefore {
            return DoctorCheck(name, .warn, "expires \(until), in \(DurationText.format(left))", hint: "renew it with `\(renew)`")
        }
        return DoctorCheck(name, .ok, "valid until \(until), \(DurationText.format(left)) left")
    }
}

extension Doctor {
    /// Whether an agent answers on this environment's socket, and for which
    /// vault; no agent is fine (clients unlock the vault themselves).
    func agentCheck() -> DoctorCheck {
        let path = AgentSocket.path(environment: context.environment)
        guard let answer = try? AgentClient(socketPath: path).ask(.init(op: .status)), answer.ok, let status = answer.status else {
            return DoctorCheck("agent", .ok, "none running on \(path) (commands unlock the vault themselves)")
        }
        let held = status.locked ? "locked (holds no key)" : "holds the key"
        let here = AgentClient.resolved(context.vaultPath).map { $0 == status.vault } ?? false
        return DoctorCheck("agent", .ok, "pid \(status.pid) on \(path), \(held), for \(here ? "this vault" : status.vault)")
    }
}
