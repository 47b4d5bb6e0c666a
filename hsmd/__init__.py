"""hsmd: a networked HSM daemon with a key-management API in the style of AWS KMS."""

__version__ = "0.1.0"
