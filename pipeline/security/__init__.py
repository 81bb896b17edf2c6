"""Who may do what: request signing and verification, secret references and
redaction (signing), the partner registry's integrity (registryauth) and sealed
dead-letter payloads (sealing).

Reads hostile input: each module here has a fuzz target (tests/fuzz). Imports
only the vocabulary (errors, config, partners).
"""
