"""Independent PyTorch reference of the official GFocalV2 model, used by the conversion tests."""
