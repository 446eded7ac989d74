"""Weight files: checkpoints and their header, the training state file, foreign weights and
loading any of them into a network."""
