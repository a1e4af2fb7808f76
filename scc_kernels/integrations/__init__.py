"""Adapters that put SCCLoss into other frameworks' training loops; each imports its framework itself."""
