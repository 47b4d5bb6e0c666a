"""gRPC: servicers, the request guard, the one error-to-status table, server start and stop."""
