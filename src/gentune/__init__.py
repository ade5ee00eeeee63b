"""gentune: fine-tune pre-trained language models for text generation, offline-first."""

__version__ = "0.1.0"
