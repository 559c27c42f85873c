"""The method itself: the typed experiment config, method presets, the hybrid loss, the prefix schedule."""
