"""Multi-way merges: which experts, in which order, with which operators, for a set of tasks; and
their verification.
"""
