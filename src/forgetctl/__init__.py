"""forgetctl: process deletion requests against a deployed language model."""

__version__ = "0.1.0"
