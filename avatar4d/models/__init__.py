"""Neural networks (single-device PyTorch; no torch.distributed, no Ray)."""
