"""Trainers on Ray Train + DeepSpeed, tracked in MLflow: per-domain GANs, the triplane VAE, the image-
conditioned DiT and the motion-aware renderer.
"""
