"""The audit trail: one hash-chained, fsynced event per RPC outcome (events.py, log.py), signed
checkpoints of the chain's head (checkpoint.py), the one verifier behind VerifyAuditLog and
`hsmd audit verify` (verify.py), and the archive-and-restart of a broken log (reset.py)."""
