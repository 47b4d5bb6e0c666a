"""The operations, one module per family: load metadata, check, call the backend, persist."""
