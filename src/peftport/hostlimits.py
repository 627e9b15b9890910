"""Limits a host's config.json puts on the settings of a run, checked before any work.

A host with a learned table of absolute positions (BERT: `max_position_embeddings`, GPT-2:
`n_positions`) cannot embed a sequence longer than its table; past it, torch fails deep in the
forward pass ("The expanded size of the tensor (404) must match ... (128)"). T5 (relative
position buckets) and Llama (rotary positions) have no such table, so no limit is set for them.
"""

from __future__ import annotations

import json
from typing import Any

from peftport.errors import PeftportError

# model_type -> the config key of its absolute position table
POSITION_KEYS: dict[str, str] = {"bert": "max_position_embeddings", "gpt2": "n_positions"}


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence a host's position table holds, or None (no table, or unknown)."""
    key = POSITION_KEYS.get(str(config.get("model_type", "")))
    value = config.get(key) if key else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def max_length_problem(host: str, config: dict[str, Any], max_length: int) -> str | None:
    """Why `max_length` tokens do not fit the host's position table, or None."""
    limit = max_positions(config)
    if limit is None or max_length <= limit:
        return None
    key = POSITION_KEYS[str(config.get("model_type"))]
    return (
        f"max_length {max_length} is longer than host {host!r} can embed: its position "
        f"table holds {limit} tokens ({key} in its config.json); use max_length <= {limit}"
    )


def check_max_length(host: str, max_length: int, flag: str = "--max-length") -> None:
    """Refuse a max_length the host cannot embed, from its config.json alone (no weights are
    loaded; the host folder is resolved as the run would resolve it)."""
    from peftport.hosts import get_host, host_folder

    folder = host_folder(get_host(host))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PeftportError(f"host {host!r}: cannot read {folder / 'config.json'}: {e}") from None
    problem = max_length_problem(host, config, max_length)
    if problem:
        raise PeftportError(problem.replace("max_length", flag, 1))
