"""prefix-rft: Prefix-RFT and its baselines (SFT, RFT, LUFFY, ReLIFT, UFT, ...) as presets of one
hybrid SFT/RL token-level loss."""

__version__ = "0.1.0"
