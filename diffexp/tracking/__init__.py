"""Where results go besides the run directory: trackers (W&B, none), the console summary, the sweep report and its Hydra callback."""
