"""pico-analyze: learning-dynamics metrics over Pico (and original pico-train) checkpoints."""

__version__ = "0.1.0"
