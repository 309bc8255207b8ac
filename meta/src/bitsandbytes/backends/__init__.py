"""Kernel backends that live in the meta-package (only the pure-PyTorch reference)."""
