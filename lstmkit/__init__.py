"""lstmkit: Long Short-Term Memory networks as the literature defines them."""

__version__ = "0.1.0"
