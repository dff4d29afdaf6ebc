"""pico-train: train pico-decoder models with reproducible learning-dynamics checkpoints."""

__version__ = "0.1.0"
