"""On-disk session shards: tar files of PNG + JSON, readable by webdataset and by :func:`iter_shard`.

One session (K + 1 frames, K turns) is stored as members sharing the key prefix (webdataset convention:
the key is the file name up to its first dot)::

    {key}.json            metadata: turns (instruction, camera tag, category, objects, changes),
                          provenance (video, shot, timestamps, frame indices, annotator, masker)
    {key}.frame{i}.png    frame i, RGB, i = 0..K
    {key}.roe{i}.src.png  RoE of turn i in frame i (the paper's M_i0), 8-bit L, 0 or 255
    {key}.roe{i}.tgt.png  RoE of turn i in frame i + 1 (M_i1)

Tar members have fixed metadata (mtime 0, uid 0, mode 644) so the same sessions give the same bytes.
A shard is written to ``NAME.tar.tmp`` and renamed to ``NAME.tar`` when complete.

Example:
    >>> for s in iter_shard("out/shard-00000.tar"):  # doctest: +SKIP
    ...     print(s.key, len(s.frames), [t.instruction for t in s.turns])
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

SESSION_FORMAT = "vincie-session/1"
CAMERA_NONE = "None"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class TurnRecord:
    """One transition frame i -> frame i + 1 of a session.

    Attributes:
        instruction: the editing instruction (the paper's T_i).
        camera: camera tag, ``"None"`` for a static camera, else e.g. ``"pan-left"`` or ``"zoom-in"``.
        category: a coarse label (``add``, ``move``, ... for synthetic data; the VLM's category otherwise).
        objects_src / objects_tgt: the changing objects named in frame i / frame i + 1.
        roe_src / roe_tgt: (H, W) bool region-of-editing masks in frame i / i + 1, or ``None``.
        changes: structured changes (exact for synthetic data, empty otherwise).
        extra: anything else the annotator returned (descriptions, differences...).
    """

    instruction: str
    camera: str = CAMERA_NONE
    category: str = "other"
    objects_src: list[str] = field(default_factory=list)
    objects_tgt: list[str] = field(default_factory=list)
    roe_src: np.ndarray | None = None
    roe_tgt: np.ndarray | None = None
    changes: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def meta(self) -> dict:
        d = {
            "instruction": self.instruction,
            "camera": self.camera,
            "category": self.category,
            "objects_src": list(self.objects_src),
            "objects_tgt": list(self.objects_tgt),
            "changes": self.changes,
            "has_roe": self.roe_src is not None,
        }
        if self.roe_src is not None:
            d["roe_coverage"] = [round(float(self.roe_src.mean()), 6), round(float(self.roe_tgt.mean()), 6)]
        if self.extra:
            d["extra"] = self.extra
        return d


@dataclass
class SessionRecord:
    """An interleaved session (I0, T0, M00, M01, I1, T1, ...): K + 1 frames and K turns.

    Attributes:
        key: unique sample key, ``[A-Za-z0-9_-]+`` (no dots: webdataset splits keys at the first dot).
        frames: K + 1 images, each (H, W, 3) uint8.
        turns: K :class:`TurnRecord`.
        provenance: where it came from (video path, shot, timestamps, frame indices, sampling,
            annotator, masker).
    """

    key: str
    frames: list[np.ndarray]
    turns: list[TurnRecord]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _KEY_RE.match(self.key):
            raise ValueError(f"SessionRecord: key {self.key!r} must match [A-Za-z0-9_-]+ (no dots or slashes)")
        if len(self.frames) != len(self.turns) + 1:
            raise ValueError(
                f"SessionRecord {self.key}: {len(self.frames)} frames need {len(self.frames) - 1} turns, "
                f"got {len(self.turns)}"
            )

    @property
    def instructions(self) -> list[str]:
        return [t.instruction for t in self.turns]

    def meta(self) -> dict:
        h, w = self.frames[0].shape[:2]
        return {
            "format": SESSION_FORMAT,
            "key": self.key,
            "num_frames": len(self.frames),
            "width": int(w),
            "height": int(h),
            "turns": [t.meta() for t in self.turns],
            "provenance": self.provenance,
        }


def camera_prefix(tag: str) -> str:
    """The paper's camera prompt for a turn's camera tag, to prepend to its instruction in training.

    Example:
        >>> camera_prefix("pan-left")
        '[###CAMERA: pan-left###] '
    """
    return f"[###CAMERA: {tag or CAMERA_NONE}###] "


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level fixed so identical arrays give identical bytes across runs.
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_session(session: SessionRecord) -> list[tuple[str, bytes]]:
    """Tar members ``(name, bytes)`` of a session, in the documented order (json first)."""
    members = [(f"{session.key}.json", json.dumps(session.meta(), sort_keys=True, indent=1).encode())]
    for i, frame in enumerate(session.frames):
        members.append((f"{session.key}.frame{i}.png", _png(np.asarray(frame, dtype=np.uint8))))
    for i, turn in enumerate(session.turns):
        if turn.roe_src is not None:
            members.append((f"{session.key}.roe{i}.src.png", _png(turn.roe_src.astype(np.uint8) * 255)))
            members.append((f"{session.key}.roe{i}.tgt.png", _png(turn.roe_tgt.astype(np.uint8) * 255)))
    return members


class ShardWriter:
    """Write sessions to ``path`` atomically: members go to ``path.tmp``, renamed on a clean exit.

    On an exception the temporary file is removed, so no partial shard is ever visible under ``path``.

    Example:
        >>> with ShardWriter("out/shard-00000.tar") as w:  # doctest: +SKIP
        ...     w.write(session)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.count = 0
        self._keys: set[str] = set()
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        return self

    def write(self, session: SessionRecord) -> None:
        if session.key in self._keys:
            raise ValueError(f"ShardWriter {self.path}: duplicate session key {session.key!r}")
        self._keys.add(session.key)
        for name, data in encode_session(session):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tar.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _split_member(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    key, _, ext = base.partition(".")
    return key, ext


def _decode_session(key: str, files: dict[str, bytes], source: str) -> SessionRecord:
    if "json" not in files:
        raise ValueError(f"{source}: session {key!r} has no {key}.json member")
    meta = json.loads(files["json"])
    if meta.get("format") != SESSION_FORMAT:
        raise ValueError(f"{source}: session {key!r} has format {meta.get('format')!r}, expected {SESSION_FORMAT!r}")

    def img(ext: str, mode: str) -> np.ndarray:
        if ext not in files:
            raise ValueError(f"{source}: session {key!r} lacks member {key}.{ext}")
        return np.asarray(Image.open(io.BytesIO(files[ext])).convert(mode))

    frames = [img(f"frame{i}.png", "RGB") for i in range(meta["num_frames"])]
    turns = []
    for i, t in enumerate(meta["turns"]):
        has = t.get("has_roe", False)
        turns.append(
            TurnRecord(
                instruction=t["instruction"],
                camera=t.get("camera", CAMERA_NONE),
                category=t.get("category", "other"),
                objects_src=t.get("objects_src", []),
                objects_tgt=t.get("objects_tgt", []),
                roe_src=img(f"roe{i}.src.png", "L") > 127 if has else None,
                roe_tgt=img(f"roe{i}.tgt.png", "L") > 127 if has else None,
                changes=t.get("changes", []),
                extra=t.get("extra", {}),
            )
        )
    return SessionRecord(key=key, frames=frames, turns=turns, provenance=meta.get("provenance", {}))


def iter_shard(path: str | os.PathLike) -> Iterator[SessionRecord]:
    """Read the sessions of one shard in order (a plain reader: tarfile + PIL, no webdataset needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"iter_shard: no shard at {path}")
    try:
        tar = tarfile.open(path, "r")
    except tarfile.TarError as exc:
        raise ValueError(f"iter_shard: {path} is not a readable tar file: {exc}") from exc
    with tar:
        key, files = None, {}
        for member in tar:
            if not member.isfile():
                continue
            k, ext = _split_member(member.name)
            if k != key and key is not None:
                yield _decode_session(key, files, str(path))
                files = {}
            key = k
            files[ext] = tar.extractfile(member).read()
        if key is not None:
            yield _decode_session(key, files, str(path))


def list_shards(path: str | os.PathLike) -> list[Path]:
    """Shard files of a directory (sorted ``*.tar``), or ``[path]`` for a single shard file."""
    path = Path(path)
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"list_shards: {path} is neither a shard file nor a directory")


def read_sessions(path: str | os.PathLike) -> Iterator[SessionRecord]:
    """All sessions of a shard file or of every ``*.tar`` in a directory.

    Example:
        >>> n = sum(1 for _ in read_sessions("out/"))  # doctest: +SKIP
    """
    for shard in list_shards(path):
        yield from iter_shard(shard)
