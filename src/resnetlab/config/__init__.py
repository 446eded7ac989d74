"""The settings of a run, free of torch: training's and fine-tuning's configs, the recipes."""
