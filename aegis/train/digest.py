"""The model digest, computable without importing torch.

Verification (``aegis verify``, ``rollback``, ``promote``) needs the digest of
a checkpoint but not the model itself, and importing torch costs seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METADATA = "metadata.json"


def digest_of(weights: bytes, config: bytes) -> str:
    """``sha256:`` over the weights bytes, then the config bytes."""
    h = hashlib.sha256()
    h.update(weights)
    h.update(config)
    return "sha256:" + h.hexdigest()


def model_digest(directory: Path) -> str:
    """The digest of the checkpoint in ``directory`` (weights file, then config file)."""
    return digest_of((directory / WEIGHTS).read_bytes(), (directory / CONFIG).read_bytes())
