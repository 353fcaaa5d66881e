"""modaloom: pre-training and fine-tuning models of any modality, composed from five parts."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "build_model"]


def __getattr__(name: str):
    # Lazy so that `import modaloom` (e.g. for the CLI's --help) does not import torch.
    if name in ("load", "build_model"):
        from modaloom import model

        return getattr(model, name)
    raise AttributeError(name)
