"""Storage backends: bytes by name. See base.py for the contract."""
