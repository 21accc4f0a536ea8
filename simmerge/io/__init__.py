"""Checkpoint IO, below every stage: safetensors reading, lazy checkpoints, mergeability checks, HF
model loading.
"""
