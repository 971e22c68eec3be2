"""Experiment trackers (``logger=``). Local outputs are written by the run itself, whatever the logger."""
