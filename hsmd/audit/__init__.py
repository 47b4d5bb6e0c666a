"""The audit trail: one hash-chained, fsynced event per RPC outcome (events.py, log.py)."""
