"""The cryptographic backend: tenant tokens behind a domain-level interface (api.py)."""
