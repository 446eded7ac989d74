"""The training run (run.py, top to bottom) with its helpers, its run folder, and the commands
that train: train, finetune, lr-find."""
