"""reviewstream: LLM-written performance reviews delivered while they are being written."""

__version__ = "0.1.0"
