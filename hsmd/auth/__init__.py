"""Who is calling and what they may do; gRPC-free (transport hands in the peer certificate)."""
