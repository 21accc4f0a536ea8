"""Measured merge outcomes: the append-only store and the exhaustive collection that fills it."""
