"""Sampling defaults shared by every entry point (CLI, Session, workflows, eval).

Chosen on the shipped `shapes-tiny` model (BENCHMARKS.md); torch-free so that the CLI can show them in
`--help` without importing the model stack.
"""
DEFAULT_STEPS = 20  # DPM-Solver++ steps per latent
DEFAULT_CFG = 2.0  # classifier-free guidance scale (1 = off)
DEFAULT_TEMPERATURE = 0.85  # scale of the starting noise (below 1: nearer the mode)
