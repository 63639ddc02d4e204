"""ctxlit: a PyTorch Lightning experiment suite for context and attention blocks in CNNs."""

__version__ = "0.1.0"
