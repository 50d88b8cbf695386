"""Image-conditioned DiT training: recipes and the task the shared engine runs."""
