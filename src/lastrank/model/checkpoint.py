"""The random-weights marker: what says a folder holds a random checkpoint (written by lastrank/checkpoints/,
`lastrank make-checkpoint`), read wherever a model is loaded.

Every folder a writer writes is marked twice, so no output can pass its numbers off as a model's:
``"lastrank_random_weights": true`` in config.json (what `is_random_checkpoint` reads) and a
RANDOM_WEIGHTS.txt next to the weights (what a person listing the folder sees). `lastrank rerank`, `lastrank
eval` (report and plot) and the server say so whenever they run one.

Torch-free: `is_random_checkpoint` reads one small JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path

NOTICE = "random weights from `lastrank make-checkpoint`: its scores are meaningless; for tests and benchmarks only"
RANDOM_WEIGHTS_KEY = "lastrank_random_weights"  # config.json field
RANDOM_WEIGHTS_FILE = "RANDOM_WEIGHTS.txt"


def is_random_checkpoint(path: str | Path) -> bool:
    """True for a folder written by `lastrank make-checkpoint` (random weights: scores mean nothing).

    Reads only config.json (and looks for RANDOM_WEIGHTS.txt). Folders made before the marker existed are
    recognised by the `lastrank_notice` field they carry. A missing or unreadable folder is False: this
    says what a folder is, it does not check that it loads."""
    folder = Path(path)
    if (folder / RANDOM_WEIGHTS_FILE).is_file():
        return True
    config = read_config(folder)
    return config.get(RANDOM_WEIGHTS_KEY) is True or "lastrank_notice" in config


def read_config(folder: Path) -> dict:
    """A folder's config.json parsed, or {} when it is missing, unreadable or not a JSON object: what family
    detection (families.folder_facts), dtype auto's probe and the marker above read before any loader, whose
    own reading is strict."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
