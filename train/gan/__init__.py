"""Per-domain Next3D GAN fine-tuning (ADA, lazy R1, density regulariser, decreasing D-input blur)."""
