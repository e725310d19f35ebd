"""Training: options (recipe + overrides), the trainer's stages, strategy, callbacks, coupled-L2 SGD, schedule, checkpoints."""
