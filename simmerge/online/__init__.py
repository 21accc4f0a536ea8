"""Online selection: the contextual bandit, its durable state, and the replay simulation."""
