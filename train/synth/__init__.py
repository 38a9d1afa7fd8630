"""The synthetic shapes world: exact scenes, edits, instructions, videos and a pixel parser.

Trainer entry points:

* :func:`sample_transition_session` -- an n-turn editing session (frames, RoE masks, instructions,
  camera tags, exact scenes) straight from a random generator, no files involved.
* :func:`render` / :func:`parse_scene` -- scene -> pixels -> scene, exact at 64 px and above.
* :func:`synth_dataset` -- mp4 videos with JSON sidecars for the video -> session pipeline.

Example:
    >>> import numpy as np
    >>> from vincie_train.synth import sample_transition_session, parse_scene, scene_signature
    >>> s = sample_transition_session(np.random.default_rng(0), n_turns=2)
    >>> scene_signature(parse_scene(s.frames[-1])) == scene_signature(s.scenes[-1])
    True
"""

from .dynamics import (
    Edit,
    SynthSession,
    WorldConfig,
    apply_edit,
    fuse_roe,
    roe_from_masks,
    sample_edit,
    sample_scene,
    sample_transition_session,
)
from .instructions import (
    CHANGE_TYPES,
    EDIT_TYPES,
    TEMPLATES,
    Change,
    camera_tag,
    category_of,
    describe_change,
    describe_changes,
    diff_scenes,
    templates_for,
)
from .parse import parse_scene, scene_signature
from .undo import sample_undo, undo_edits, undo_span
from .video import SynthVideo, load_sidecar, rle_decode, rle_encode, sample_video, synth_dataset, write_synth_video
from .world import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Camera,
    Scene,
    SceneObject,
    region_name,
    render,
    render_layers,
    render_masks,
)

__all__ = [
    "BACKGROUNDS",
    "CHANGE_TYPES",
    "COLORS",
    "EDIT_TYPES",
    "SHAPES",
    "SIZES",
    "TEMPLATES",
    "Camera",
    "Change",
    "Edit",
    "Scene",
    "SceneObject",
    "SynthSession",
    "SynthVideo",
    "WorldConfig",
    "apply_edit",
    "camera_tag",
    "category_of",
    "describe_change",
    "describe_changes",
    "diff_scenes",
    "fuse_roe",
    "load_sidecar",
    "parse_scene",
    "region_name",
    "render",
    "render_layers",
    "render_masks",
    "rle_decode",
    "rle_encode",
    "roe_from_masks",
    "sample_edit",
    "sample_scene",
    "sample_transition_session",
    "sample_undo",
    "sample_video",
    "scene_signature",
    "synth_dataset",
    "templates_for",
    "undo_edits",
    "undo_span",
    "write_synth_video",
]
