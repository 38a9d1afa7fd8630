"""Editors for ShapesBench: the model (with or without context), the baselines, and a folder of outputs.

An editor is a factory ``editor(item) -> TurnEditor``; the returned object edits one session turn by
turn with ``edit(instruction) -> image`` and may predict the region masks of the coming edit with
``predict_masks(instruction) -> (current, next)`` (``None`` = not supported).

* :class:`ModelEditor` -- a :class:`vincie_sdk.Session`; ``context=True`` keeps the whole history in
  context (the model as it is meant to be used), ``context=False`` is the "no context" baseline: every
  turn starts a fresh session from the previous output alone; ``chain=True`` edits by chain of editing.
  For teacher-forced runs its sessions also ``follow_truth(instruction, image)``: the next turn continues
  from the ground truth (with the true history, or from the true last image alone without context).
* :func:`copy_editor` -- returns its input unchanged (the judge must score it ~0).
* :func:`oracle_editor` -- renders the ground truth and returns the true masks (must score 1.0).
* :class:`FolderEditor` -- reads another system's outputs ``{id}_turn{k}.png`` (and optional
  ``{id}_turn{k}_current.png`` / ``_next.png`` masks).

Example:
    >>> from vincie_train.eval.shapes_bench import make_items
    >>> item = make_items(1)[0]
    >>> copy_editor(item).edit(item.instructions[0]) == item.image(0)
    True
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .judge import ImageLike
from .shapes_bench import ShapesItem


HISTORIES = ("true", "no-text", "last-image", "last-image-no-text")
# An instruction with no words (a session needs a non-empty one): what the "no-text" histories hold.
WORDLESS = "."


class _Copy:
    def __init__(self, image: Image.Image) -> None:
        self.image = image

    def edit(self, instruction: str) -> Image.Image:
        return self.image

    def predict_masks(self, instruction: str) -> None:
        return None


def copy_editor(item: ShapesItem) -> _Copy:
    """Baseline: every turn returns the start image unchanged."""
    return _Copy(item.image(0))


class _Oracle:
    def __init__(self, item: ShapesItem) -> None:
        self.item, self.turn = item, 0

    def edit(self, instruction: str) -> Image.Image:
        self.turn += 1
        return self.item.image(self.turn)

    def predict_masks(self, instruction: str) -> tuple[ImageLike, ImageLike]:
        return self.item.roe(self.turn + 1)


def oracle_editor(item: ShapesItem) -> _Oracle:
    """Ground truth: renders the expected scene of every turn and returns the true RoE masks."""
    return _Oracle(item)


class ModelEditor:
    """A VINCIE model as a ShapesBench editor.

    Args:
        model: a loaded :class:`vincie_sdk.VincieModel`.
        context: keep the whole session in context (``False``: the "no context" baseline).
        steps, cfg_scale: sampling overrides (``None``: the model's defaults).
        seed: the session noise seed (the same for every item, as the official code does per turn).
        masks: answer :meth:`predict_masks` with the model's CSP/NSP predictions.
        chain: chain of editing (paper Table 3): every turn predicts the current-region mask, then the
            next-region mask, both kept in context, then the image (:meth:`Session.chain_edit`).
        history: teacher-forced runs only, what of the true past the context holds (a probe of what in a
            history hurts): ``"true"`` (all of it), ``"no-text"`` (the earlier instructions replaced by a
            wordless one), ``"last-image"`` (every earlier image replaced by the last true one, so the
            context holds no earlier content, only its length and instructions), ``"last-image-no-text"``.
    """

    def __init__(self, model, *, context: bool = True, steps: int | None = None, cfg_scale: float | None = None,
                 seed: int = 1, masks: bool = True, chain: bool = False, history: str = "true") -> None:
        if history not in HISTORIES:
            raise ValueError(f"ModelEditor: history={history!r}; use one of {', '.join(HISTORIES)}")
        self.model, self.context, self.masks, self.chain, self.history = model, context, masks, chain, history
        self.kwargs = {"seed": seed, "steps": steps, "cfg_scale": cfg_scale}

    def session(self, image: ImageLike):
        from vincie_sdk.session import Session

        return Session(self.model, image, **self.kwargs)

    def __call__(self, item: ShapesItem) -> _ModelTurns:
        return _ModelTurns(self, item.image(0))


class _ModelTurns:
    def __init__(self, editor: ModelEditor, image: Image.Image) -> None:
        self.editor = editor
        self.session = editor.session(image)
        self.truth: list[tuple[str, Image.Image]] = [("", image)]  # (instruction, true image) so far

    def edit(self, instruction: str) -> Image.Image:
        image = (self.session.chain_edit if self.editor.chain else self.session.edit)(instruction)
        if not self.editor.context:
            self.session = self.editor.session(image)  # the next turn sees this output alone
        return image

    def follow_truth(self, instruction: str, image: Image.Image) -> None:
        """Teacher forcing: the next turn continues from the ground-truth ``image`` instead of the output."""
        self.truth.append((instruction, image))
        if not self.editor.context:
            self.session = self.editor.session(image)
        elif self.editor.history == "true":
            self.session.undo()
            self.session.add_turn(instruction, image)
        else:  # rebuilt from the altered true past
            last = self.editor.history.startswith("last-image")
            self.session = self.editor.session(image if last else self.truth[0][1])
            for text, truth in self.truth[1:]:
                self.session.add_turn(WORDLESS if self.editor.history.endswith("no-text") else text,
                                      image if last else truth)

    def predict_masks(self, instruction: str) -> tuple[Image.Image, Image.Image] | None:
        if not self.editor.masks:
            return None
        return (self.session.predict_mask(instruction, "current"), self.session.predict_mask(instruction, "next"))


class FolderEditor:
    """Another system's outputs from ``folder``: ``{id}_turn{k}.png`` per turn (a missing file fails that
    turn), and optionally ``{id}_turn{k}_current.png`` + ``{id}_turn{k}_next.png`` masks."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"predictions folder not found: {self.folder}")

    def __call__(self, item: ShapesItem) -> _FolderTurns:
        return _FolderTurns(self.folder, item.id)


class _FolderTurns:
    def __init__(self, folder: Path, item_id: str) -> None:
        self.folder, self.item_id, self.turn = folder, item_id, 0

    def _read(self, turn: int, suffix: str = "") -> Image.Image | None:
        path = self.folder / f"{self.item_id}_turn{turn}{suffix}.png"
        if not path.is_file():
            return None
        with Image.open(path) as f:
            return f.convert("L" if suffix else "RGB")

    def edit(self, instruction: str) -> Image.Image | None:
        self.turn += 1
        return self._read(self.turn)

    def predict_masks(self, instruction: str) -> tuple[Image.Image, Image.Image] | None:
        # Called before edit(): the masks belong to the coming turn.
        current, nxt = self._read(self.turn + 1, "_current"), self._read(self.turn + 1, "_next")
        return (current, nxt) if current is not None and nxt is not None else None
