"""Region-of-editing (RoE) masks for each turn: the changing regions of the source and target frames.

Backends:

* ``synthetic`` -- exact: the sidecar's visible masks of the changed objects; global changes
  (background, lighting, camera) cover the whole frame.
* ``diff`` -- no model: thresholded frame difference cleaned by morphology (quick starts, static cameras).
* ``grounded-sam2`` -- the paper's: GroundingDINO (transformers) boxes the changing objects named by the
  annotator, SAM 2 (``sam2`` package) segments each box, and :func:`fuse_roe` fuses the local masks of
  both frames into the two RoE maps.

All maskers return ``(roe_src, roe_tgt)``, each (H, W) bool at the clip's frame size.

Example:
    >>> import numpy as np
    >>> a = np.zeros((32, 32, 3), np.uint8); b = a.copy(); b[8:16, 8:16] = 255
    >>> src, tgt = DiffMasker().masks(Clip(None, "k", [a, b], [0, 1], [0.0, 0.1]), 0, None)
    >>> bool(src[12, 12]), bool(src[28, 28])
    (True, False)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..synth.dynamics import GLOBAL_CHANGES, fuse_roe
from ..synth.video import rle_decode
from .annotate import Clip, Transition

log = logging.getLogger(__name__)

# Categories of real-video annotations whose change is the whole frame.
GLOBAL_CATEGORIES = ("background", "camera", "global")


class MaskError(ValueError):
    """Masks could not be produced for a turn (the message says why)."""


class Masker(Protocol):
    name: str

    def masks(self, clip: Clip, i: int, transition: Transition | None) -> tuple[np.ndarray, np.ndarray]:
        """RoE maps of turn ``i`` (frames i -> i + 1); raise :class:`MaskError` to reject the turn."""


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(img) > 127


def _crop_mask(mask: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = crop
    h, w = mask.shape
    return mask[top : h - bottom, left : w - right]


def _full(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(shape, dtype=bool), np.ones(shape, dtype=bool)


class SyntheticMasker:
    """Exact RoEs from the synthetic sidecar (see :func:`vincie_train.synth.roe_from_masks`)."""

    name = "synthetic"

    def masks(self, clip: Clip, i: int, transition: Transition | None) -> tuple[np.ndarray, np.ndarray]:
        if clip.sidecar is None:
            raise MaskError(f"no synthetic sidecar next to {clip.video}")
        if transition is None:
            raise MaskError("the synthetic masker needs the synthetic annotator's transition")
        shape = clip.frames[i].shape[:2]
        if any(c["type"] in GLOBAL_CHANGES for c in transition.changes):
            return _full(shape)
        frames = clip.sidecar["frames"]

        def local(frame_index: int) -> dict[int, np.ndarray]:
            out = {}
            for o in frames[frame_index]["objects"]:
                if o["id"] in transition.object_ids:
                    m = _crop_mask(rle_decode(o["mask"]), clip.crop)
                    out[o["id"]] = _resize_mask(m, shape)
            return out

        return fuse_roe(local(clip.indices[i]), local(clip.indices[i + 1]), shape)


# --- morphology without scipy/opencv -------------------------------------------------------------------


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r + 1)^2 square."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    p = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion with a (2r + 1)^2 square (outside the image counts as set, so edges survive)."""
    return ~dilate(~mask, radius)


class DiffMasker:
    """RoE = pixels that change between the two frames, cleaned up; the same map for both frames.

    Args:
        threshold: minimum largest-channel difference (0..255) of a changed pixel.
        open_radius: opening radius, removes speckles (noise, compression, isolated pixels).
        close_radius: closing radius, fills holes inside changed objects.
        dilate_radius: final growth so the map covers object borders.
        work_side: the difference is taken on frames average-pooled to about this short side.
    """

    name = "diff"

    def __init__(self, threshold: float = 25.0, open_radius: int = 1, close_radius: int = 2, dilate_radius: int = 1,
                 work_side: int = 64):
        self.threshold, self.work_side = threshold, work_side
        self.open_radius, self.close_radius, self.dilate_radius = open_radius, close_radius, dilate_radius

    def masks(self, clip: Clip, i: int, transition: Transition | None) -> tuple[np.ndarray, np.ndarray]:
        a = clip.frames[i].astype(np.float32)
        b = clip.frames[i + 1].astype(np.float32)
        h, w = a.shape[:2]
        # Work at ~64 px on the short side: texture and compression noise average out in the blocks,
        # and the morphology radii mean the same thing whatever the frame size.
        f = max(1, min(h, w) // self.work_side)
        hh, ww = h // f, w // f
        pool = lambda x: x[: hh * f, : ww * f].reshape(hh, f, ww, f, 3).mean(axis=(1, 3))  # noqa: E731
        m = np.abs(pool(a) - pool(b)).max(axis=-1) > self.threshold
        m = dilate(erode(m, self.open_radius), self.open_radius)
        m = erode(dilate(m, self.close_radius), self.close_radius)
        m = dilate(m, self.dilate_radius)
        full = np.zeros((h, w), dtype=bool)
        full[: hh * f, : ww * f] = np.repeat(np.repeat(m, f, axis=0), f, axis=1)
        # Right/bottom remainders (when the size is not a multiple of f) copy the last block row/column.
        full[hh * f :, :] = full[hh * f - 1 : hh * f, :]
        full[:, ww * f :] = full[:, ww * f - 1 : ww * f]
        return full, full.copy()


class GroundedSam2Masker:
    """The paper's RoE masks: GroundingDINO boxes for each changing object, SAM 2 masks inside the boxes.

    Args:
        detector: a ``GroundingDinoForObjectDetection`` (eval mode).
        processor: its ``GroundingDinoProcessor``.
        predictor: a ``sam2.sam2_image_predictor.SAM2ImagePredictor``.
        box_threshold / text_threshold: GroundingDINO post-processing thresholds.
        max_boxes: boxes kept per phrase (highest scores).

    Use :meth:`from_paths` to load both models from local files.
    """

    name = "grounded-sam2"

    def __init__(self, detector, processor, predictor, box_threshold: float = 0.3, text_threshold: float = 0.25,
                 max_boxes: int = 3):
        self.detector, self.processor, self.predictor = detector, processor, predictor
        self.box_threshold, self.text_threshold, self.max_boxes = box_threshold, text_threshold, max_boxes

    @classmethod
    def from_paths(
        cls,
        gdino_dir: str,
        sam2_checkpoint: str,
        sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        device: str = "cpu",
        **kwargs,
    ) -> GroundedSam2Masker:
        """Load GroundingDINO from a transformers folder and SAM 2 from a checkpoint file (no downloads).

        Args:
            gdino_dir: folder with a GroundingDINO config, weights and processor files
                (e.g. a local copy of ``IDEA-Research/grounding-dino-tiny``).
            sam2_checkpoint: a SAM 2 ``.pt`` checkpoint (e.g. ``sam2.1_hiera_tiny.pt``).
            sam2_config: the matching config name inside the ``sam2`` package.
        """
        gdino, ckpt = Path(gdino_dir), Path(sam2_checkpoint)
        if not gdino.is_dir():
            raise FileNotFoundError(
                f"masker 'grounded-sam2': GroundingDINO folder {gdino} does not exist; pass --gdino DIR"
            )
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"masker 'grounded-sam2': SAM 2 checkpoint {ckpt} does not exist; pass --sam2-checkpoint FILE"
            )
        try:
            from sam2.build_sam import build_sam2
            from sam2.sam2_image_predictor import SAM2ImagePredictor
        except ImportError as exc:
            raise ImportError("masker 'grounded-sam2' needs SAM 2: SAM2_BUILD_CUDA=0 pip install sam2") from exc
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        processor = AutoProcessor.from_pretrained(gdino, local_files_only=True)
        detector = GroundingDinoForObjectDetection.from_pretrained(gdino, local_files_only=True).to(device).eval()
        predictor = SAM2ImagePredictor(build_sam2(sam2_config, str(ckpt), device=device))
        return cls(detector, processor, predictor, **kwargs)

    def detect(self, image: np.ndarray, phrase: str) -> np.ndarray:
        """Boxes ``(N, 4)`` in pixels ``(x0, y0, x1, y1)`` for ``phrase``, best first, at most ``max_boxes``."""
        import torch

        h, w = image.shape[:2]
        text = phrase.lower().strip().rstrip(".") + "."  # GroundingDINO expects lower-case, dot-ended phrases
        inputs = self.processor(images=Image.fromarray(image), text=text, return_tensors="pt")
        inputs = inputs.to(self.detector.device)
        with torch.no_grad():
            outputs = self.detector(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(h, w)],
        )[0]
        boxes, scores = result["boxes"].cpu().numpy(), result["scores"].cpu().numpy()
        order = np.argsort(-scores)[: self.max_boxes]
        boxes = boxes[order].reshape(-1, 4)
        return np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)

    def segment(self, image: np.ndarray, phrases: list[str]) -> dict[str, np.ndarray]:
        """One (H, W) bool mask per phrase: the union of SAM 2 masks of its boxes (empty if none found)."""
        h, w = image.shape[:2]
        out = {}
        if not phrases:
            return out
        self.predictor.set_image(image)
        for phrase in phrases:
            boxes = self.detect(image, phrase)
            mask = np.zeros((h, w), dtype=bool)
            if len(boxes):
                masks, _, _ = self.predictor.predict(box=boxes, multimask_output=False)
                masks = np.asarray(masks).reshape(len(boxes), -1, h, w)  # (N, 1, H, W) whatever N is
                mask = masks.any(axis=(0, 1)) if masks.dtype == bool else (masks > 0.5).any(axis=(0, 1))
            out[phrase] = mask
        return out

    def masks(self, clip: Clip, i: int, transition: Transition | None) -> tuple[np.ndarray, np.ndarray]:
        if transition is None:
            raise MaskError("the grounded-sam2 masker needs the annotated changing objects")
        shape = clip.frames[i].shape[:2]
        if not transition.objects_src and not transition.objects_tgt:
            if transition.category in GLOBAL_CATEGORIES or transition.camera != "None":
                return _full(shape)
            raise MaskError("the annotation names no changing object to ground")
        src = self.segment(clip.frames[i], transition.objects_src)
        tgt = self.segment(clip.frames[i + 1], transition.objects_tgt)
        roe_src, roe_tgt = fuse_roe(src, tgt, shape)
        if not roe_src.any():
            named = transition.objects_src + transition.objects_tgt
            raise MaskError(f"no changing object was found in either frame: {named}")
        return roe_src, roe_tgt


def make_masker(name: str, **options) -> Masker:
    """Build a masker by CLI name: ``synthetic``, ``diff`` or ``grounded-sam2``."""
    if name == "synthetic":
        return SyntheticMasker()
    if name == "diff":
        return DiffMasker(**options)
    if name == "grounded-sam2":
        return GroundedSam2Masker.from_paths(**options)
    raise ValueError(f"unknown masker {name!r}; use 'synthetic', 'diff' or 'grounded-sam2'")
