"""Triplane-VAE training: recipes, the rendered losses, and the task the shared engine runs."""
