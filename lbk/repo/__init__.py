"""The repository: encrypted, authenticated, deduplicated objects on a backend."""
