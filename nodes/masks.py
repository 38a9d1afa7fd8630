"""VINCIE Mask Predictor (CSP / NSP) and Mask Transform (drag editing)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import convert, runtime


class VincieMaskPredictor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieMaskPredictor",
            display_name="VINCIE Mask Predictor",
            category=runtime.CATEGORY,
            description="Predict the region an instruction will change: in the current image (CSP, 'current') or "
                        "where it will be in the next image (NSP, 'next'). The session is not changed; feed the "
                        "mask to a NIP Sampler to edit with it in the context.",
            inputs=[
                runtime.SessionSocket.Input("session"),
                runtime.instruction_input(),
                io.Combo.Input("which", options=["current", "next"], default="current",
                               tooltip="current: region to change in the latest image; next: where it will be after "
                                       "the edit."),
                runtime.steps_input(),
                runtime.cfg_input(),
                runtime.turn_seed_input(),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="At the session's working size.")],
        )

    @classmethod
    def validate_inputs(cls, instruction=None) -> bool | str:
        return runtime.check_instruction(instruction)

    @classmethod
    def execute(cls, session, instruction: str, which: str, steps: int, cfg: float, seed: int) -> io.NodeOutput:
        runtime.prepare(session.model)
        mask = session.predict_mask(instruction, which, steps=steps or None, cfg_scale=cfg or None,
                                    seed=runtime.turn_seed(seed),
                                    callback=runtime.Progress(runtime.resolved_steps(session, steps)))
        return io.NodeOutput(convert.pils_to_mask(mask))


class VincieMaskTransform(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieMaskTransform",
            display_name="VINCIE Mask Transform",
            category=runtime.CATEGORY,
            description="Move a region mask as if dragging the object: flip, scale and rotate about the region's "
                        "centre, then translate. Feed the original mask as 'mask' and the moved one as 'next_mask' "
                        "of a NIP Sampler.",
            inputs=[
                io.Mask.Input("mask"),
                io.Float.Input("translate_x", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Shift right, as a fraction of the width (negative: left)."),
                io.Float.Input("translate_y", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Shift down, as a fraction of the height (negative: up)."),
                io.Float.Input("scale", default=1.0, min=0.05, max=10.0, step=0.05,
                               tooltip="Size factor about the region's centre."),
                io.Float.Input("rotate", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Degrees counter-clockwise about the region's centre."),
                io.Combo.Input("flip", options=list(convert.FLIPS), default="none",
                               tooltip="Mirror the region in place."),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, mask: torch.Tensor, translate_x: float, translate_y: float, scale: float, rotate: float,
                flip: str) -> io.NodeOutput:
        return io.NodeOutput(convert.transform_mask(mask, translate_x=translate_x, translate_y=translate_y,
                                                    scale=scale, rotate=rotate, flip=flip))


NODES = [VincieMaskPredictor, VincieMaskTransform]
