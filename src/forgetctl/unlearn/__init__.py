"""The unlearning engine: layer attribution, objectives, int4/relearning robustness, the
LoRA training loop and atomic adapter saving. Pure library code: no ledger, no CLI."""
