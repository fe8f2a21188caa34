"""The one error type model loading and building raise."""


class ModelError(ValueError):
    """A model cannot be loaded or built; the message names the bad value."""
