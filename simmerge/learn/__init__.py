"""Learning from outcomes: training tables, the predictor and plan model, held-out splits, metrics,
the anchoring rule, fitting.
"""
