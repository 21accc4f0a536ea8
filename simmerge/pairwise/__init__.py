"""Two-expert merges: rank every candidate from similarity features alone, then verify the top k."""
