"""Ray data factory: per-domain 4D GAN actors mass-produce image–parametric-triplane pairs and multi-
view sets into Lance datasets, exactly once.
"""
