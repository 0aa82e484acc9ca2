"""Robustness: adversarial attacks, common corruptions and shape/texture bias.

`attacks` and `corruptions` need torch only (the training engine uses `attacks` for adversarial
training); `evaluate` runs them over a dataset and sits above the training package.
"""
