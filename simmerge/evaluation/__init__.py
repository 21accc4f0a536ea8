"""Scoring models on tasks: the evaluation harness, the one scorer (normalization, reference
scores) and single-model skills.
"""
