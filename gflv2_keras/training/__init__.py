"""Training: the coupled-L2 SGD, the warm-up + step schedule, checkpoints, recipes and the trainer."""
