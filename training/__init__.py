"""Training recipes of the models qasr-live ships (dev only, not in the wheel): run from the repository root as
``python -m training.<model>.<step>``."""
