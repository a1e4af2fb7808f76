"""The fast backends, one module each (`<name>_backend.py`), behind the contract of registry.py."""
