"""Training: the run set up from its config, the loop, checkpoints, run folders, loggers."""
