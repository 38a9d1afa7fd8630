"""VINCIE Session Builder, Session to Images and Undo. A session is an immutable value here: every node
returns a new session (``Session.copy()`` shares the frames) and never changes its input."""

from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

from . import convert, runtime


def _continue(session, model, seed: int, resolution: int, negative_prompt: str, camera_prefix: str):
    """A copy of ``session`` with new settings (empty strings keep the session's)."""
    if session.model is not model:
        raise ValueError("the session was made with another model than the one connected; connect the loader "
                         "that built the session")
    if resolution and resolution != session.resolution:
        raise ValueError(f"resolution {resolution} differs from the session's {session.resolution}: a session keeps "
                         "its working size; set resolution to 0 to keep it")
    s = session.copy()
    s.settings = dataclasses.replace(s.settings, seed=seed,
                                     negative_prompt=negative_prompt or s.settings.negative_prompt,
                                     camera_prefix=camera_prefix or s.settings.camera_prefix)
    return s


class VincieSessionBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieSessionBuilder",
            display_name="VINCIE Session Builder",
            category=runtime.CATEGORY,
            description="Start an editing session from a source image, or continue an existing session with new "
                        "settings. Every VINCIE turn sees the whole session: source, earlier results and masks.",
            inputs=[
                runtime.ModelSocket.Input("model"),
                io.Image.Input("image", optional=True,
                               tooltip="Source image. A batch of several starts the session with the first as frame 0 and the "
                                       "others as references in context (edits continue from the last)."),
                runtime.SessionSocket.Input("session", optional=True,
                                            tooltip="Continue this session instead (connect either image or session)."),
                runtime.session_seed_input(),
                runtime.resolution_input(),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="Empty: the model's default (the official list of artefacts to avoid)."),
                io.String.Input("camera_prefix", default="",
                                tooltip="Text put before every instruction, e.g. '[###CAMERA: None###] ' (the paper's "
                                        "static-camera tag). Empty: the model's default."),
            ],
            outputs=[runtime.SessionSocket.Output(display_name="session")],
        )

    @classmethod
    def execute(cls, model, seed: int, resolution: int, negative_prompt: str, camera_prefix: str,
                image: torch.Tensor | None = None, session=None) -> io.NodeOutput:
        from vincie_sdk import Session

        if (image is None) == (session is None):
            raise ValueError("connect an image to start a session, or a session to continue it (one of the two)")
        if session is not None:
            return io.NodeOutput(_continue(session, model, seed, resolution, negative_prompt, camera_prefix))
        sources = convert.image_to_pils(image)
        convert.check_working_size(sources[0], resolution or model.config.session.resolution, "image",
                                   model.config.session.size_multiple)
        runtime.prepare(model)
        source = sources[0] if len(sources) == 1 else sources  # a batch: frame 0 + references
        return io.NodeOutput(Session(model, source, seed=seed, resolution=resolution or None,
                                     negative_prompt=negative_prompt or None, camera_prefix=camera_prefix or None))


class VincieSessionToImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieSessionToImages",
            display_name="VINCIE Session to Images",
            category=runtime.CATEGORY,
            description="Inspect a session: every image frame (source first) as one batch at the working size, "
                        "its region masks, the instruction of every turn and the number of turns.",
            inputs=[runtime.SessionSocket.Input("session")],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Source and every generated image, in order."),
                io.Mask.Output(display_name="masks", tooltip="Mask frames in order (one empty mask if none)."),
                io.String.Output(display_name="prompts", tooltip="The instruction of every turn, one per line."),
                io.Int.Output(display_name="turns"),
            ],
        )

    @classmethod
    def execute(cls, session) -> io.NodeOutput:
        w, h = session.size
        masks = convert.pils_to_mask(session.masks, session.size) if session.masks else torch.zeros(1, h, w)
        return io.NodeOutput(convert.session_images(session), masks, "\n".join(session.prompts), session.turns)


class VincieUndo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieUndo",
            display_name="VINCIE Undo",
            category=runtime.CATEGORY,
            description="Rewind a session: a new session without the last turns (the source stays), and its "
                        "latest image.",
            inputs=[
                runtime.SessionSocket.Input("session"),
                io.Int.Input("turns", default=1, min=1, max=64, tooltip="How many turns to remove."),
            ],
            outputs=[runtime.SessionSocket.Output(display_name="session"),
                     io.Image.Output(display_name="image", tooltip="The latest image after the undo.")],
        )

    @classmethod
    def execute(cls, session, turns: int) -> io.NodeOutput:
        s = session.copy()
        s.undo(turns)
        return io.NodeOutput(s, convert.session_images(s)[-1:])


NODES = [VincieSessionBuilder, VincieSessionToImages, VincieUndo]
