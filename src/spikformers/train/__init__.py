"""Training: config, loop, checkpoints."""
