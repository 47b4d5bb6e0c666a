"""Key and tenant metadata: the KeyStore interface (store.py) and its SQLite implementation."""
