// `import TallyfyVault` gives a program everything: the core (sealing, store,
// unlock, policy, launch) and the Tallyfy client that renews tokens.
@_exported import TallyfyVaultCore
