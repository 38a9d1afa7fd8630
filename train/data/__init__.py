"""Video -> session data pipeline and the session shard format.

* :mod:`.format` -- :class:`SessionRecord`, :class:`TurnRecord`, :class:`ShardWriter`, :func:`iter_shard`,
  :func:`read_sessions` (the on-disk format, see ``docs/data.md``).
* :mod:`.build` -- :func:`build_shards`: decode, shots, filters, hybrid sampling, annotation, RoE masks.
* :mod:`.annotate` / :mod:`.masks` -- backends (synthetic, openai, hf / synthetic, diff, grounded-sam2).
* :mod:`.show` -- contact sheets.

Example:
    >>> from vincie_train.data import read_sessions
    >>> for s in read_sessions("shards/"):  # doctest: +SKIP
    ...     frames, turns = s.frames, s.turns
"""

from .format import SessionRecord, ShardWriter, TurnRecord, camera_prefix, iter_shard, list_shards, read_sessions

__all__ = [
    "SessionRecord",
    "ShardWriter",
    "TurnRecord",
    "camera_prefix",
    "iter_shard",
    "list_shards",
    "read_sessions",
]
