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
MODEL_LIMIT = 8 * 1024**3  # largest checkpoint file read (a planted file is refused, not read)


def digest_of(weights: bytes, config: bytes) -> str:
    """``sha256:`` over the weights bytes, then the config bytes."""
    h = hashlib.sha256()
    h.update(weights)
    h.update(config)
    return "sha256:" + h.hexdigest()


def model_digest(directory: Path) -> str:
    """The digest of the checkpoint in ``directory`` (weights file, then config file)."""
    from aegis.fileutil import read_regular

    return digest_of(
        read_regular(directory / WEIGHTS, limit=MODEL_LIMIT, what=WEIGHTS),
        read_regular(directory / CONFIG, limit=MODEL_LIMIT, what=CONFIG),
    )
