"""Similarity signals: probe sets, signatures (one probe pass per model), weight sketches (one
weight pass), pair features.
"""
