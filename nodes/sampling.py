"""VINCIE NIP Sampler (one editing turn), Story Chain (several turns) and Compose (multi-concept)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import convert, runtime


class VincieNIPSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieNIPSampler",
            display_name="VINCIE NIP Sampler",
            category=runtime.CATEGORY,
            description="One editing turn (next-image prediction): apply the instruction to the session's latest "
                        "image, seeing the whole history. Returns the edited image and the extended session. "
                        "Optional masks go into the context first: 'mask' marks the region to edit in the current "
                        "image, 'next_mask' where the result should be (drag editing).",
            inputs=[
                runtime.SessionSocket.Input("session"),
                runtime.instruction_input(),
                runtime.steps_input(),
                runtime.cfg_input(),
                runtime.turn_seed_input(),
                io.Mask.Input("mask", optional=True,
                              tooltip="Region to edit in the current image (white). Resized to the session's size."),
                io.Mask.Input("next_mask", optional=True,
                              tooltip="Where the edited region should be in the result, e.g. a moved mask "
                                      "(VINCIE Mask Transform). Resized to the session's size."),
            ],
            outputs=[io.Image.Output(display_name="image"), runtime.SessionSocket.Output(display_name="session")],
        )

    @classmethod
    def validate_inputs(cls, instruction=None) -> bool | str:
        return runtime.check_instruction(instruction)

    @classmethod
    def execute(cls, session, instruction: str, steps: int, cfg: float, seed: int,
                mask: torch.Tensor | None = None, next_mask: torch.Tensor | None = None) -> io.NodeOutput:
        s = session.copy()
        runtime.prepare(s.model)
        image = s.edit(instruction, mask=convert.fit_mask(mask, s.size, "mask"),
                       next_mask=convert.fit_mask(next_mask, s.size, "next_mask"), steps=steps or None,
                       cfg_scale=cfg or None, seed=runtime.turn_seed(seed),
                       callback=runtime.Progress(runtime.resolved_steps(s, steps)))
        return io.NodeOutput(convert.pils_to_image(image), s)


class VincieStoryChain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieStoryChain",
            display_name="VINCIE Story Chain",
            category=runtime.CATEGORY,
            description="Several editing turns in a row, one instruction per line (a story). Returns every frame "
                        "(source first) as one image batch and the final session.",
            inputs=[
                runtime.SessionSocket.Input("session"),
                runtime.instruction_input("instructions", tooltip="One instruction per line; empty lines and lines "
                                                                  "starting with # are skipped."),
                runtime.steps_input(),
                runtime.cfg_input(),
                runtime.turn_seed_input(),
                io.Boolean.Input("chain_of_editing", default=False,
                                 tooltip="Per turn, first predict the current and next region masks and keep them "
                                         "in the context (paper: CS -> NS -> image; three times the sampling)."),
            ],
            outputs=[io.Image.Output(display_name="frames"), runtime.SessionSocket.Output(display_name="session")],
        )

    @classmethod
    def validate_inputs(cls, instructions=None) -> bool | str:
        return runtime.check_instruction(instructions)

    @classmethod
    def execute(cls, session, instructions: str, steps: int, cfg: float, seed: int,
                chain_of_editing: bool) -> io.NodeOutput:
        lines = convert.instruction_lines(instructions)
        s = session.copy()
        runtime.prepare(s.model)
        per_turn = runtime.resolved_steps(s, steps) * (3 if chain_of_editing else 1)
        progress = runtime.Progress(per_turn * len(lines))
        step = s.chain_edit if chain_of_editing else s.edit
        for line in lines:
            step(line, steps=steps or None, cfg_scale=cfg or None, seed=runtime.turn_seed(seed), callback=progress)
        return io.NodeOutput(convert.session_images(s), s)


class VincieCompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieCompose",
            display_name="VINCIE Compose",
            category=runtime.CATEGORY,
            description="Multi-concept composition: several reference images and a prompt give one new image. "
                        "References are <IMG0>, <IMG1>, ... in input order (batches count image by image) and are "
                        "resized to the first one's size. Returns the image and a session to keep editing.",
            inputs=[
                runtime.ModelSocket.Input("model"),
                io.Image.Input("image_1", tooltip="First reference (<IMG0>); sets the output size."),
                runtime.instruction_input("prompt", tooltip="How to combine the references, e.g. 'put the red "
                                                            "square from <IMG0> next to the circle of <IMG1>'."),
                runtime.session_seed_input(),
                runtime.resolution_input(),
                runtime.steps_input(),
                runtime.cfg_input(),
                io.Image.Input("image_2", optional=True),
                io.Image.Input("image_3", optional=True),
                io.Image.Input("image_4", optional=True),
            ],
            outputs=[io.Image.Output(display_name="image"), runtime.SessionSocket.Output(display_name="session")],
        )

    @classmethod
    def validate_inputs(cls, prompt=None) -> bool | str:
        return runtime.check_instruction(prompt)

    @classmethod
    def execute(cls, model, image_1: torch.Tensor, prompt: str, seed: int, resolution: int, steps: int, cfg: float,
                image_2=None, image_3=None, image_4=None) -> io.NodeOutput:
        from vincie_sdk import Session

        refs = [p for i, im in enumerate((image_1, image_2, image_3, image_4), 1) if im is not None
                for p in convert.image_to_pils(im, f"image_{i}")]
        convert.check_working_size(refs[0], resolution or model.config.session.resolution, "image_1",
                                   model.config.session.size_multiple)
        runtime.prepare(model)
        total = int(steps or model.config.sampler.steps)
        s = Session.compose(model, refs, prompt, seed=seed, resolution=resolution or None, steps=steps or None,
                            cfg_scale=cfg or None, callback=runtime.Progress(total))
        return io.NodeOutput(convert.pils_to_image(s.images[-1]), s)


NODES = [VincieNIPSampler, VincieStoryChain, VincieCompose]
