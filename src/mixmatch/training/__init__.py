"""Training a model: the Trainer and what it stands on (budget, runtime, processes, checkpoints, metrics)."""
