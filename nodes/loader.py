"""VINCIE Model Loader."""

from __future__ import annotations

from comfy_api.latest import io

from . import runtime


class VincieModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieModelLoader",
            display_name="VINCIE Model Loader",
            category=runtime.CATEGORY,
            description="Load a VINCIE checkpoint (DiT, VAE and text encoder) from the 'vincie' model folder: "
                        "official release folders (dit.pth, vae.pth, llm14b/), folders in this pack's format "
                        "(config.json, dit.safetensors, vae.safetensors, text_encoder/), or the embedded "
                        "'vincie-shapes' model once installed. ComfyUI moves the weights to its device when a "
                        "VINCIE node runs and unloads them when another model needs the memory.",
            inputs=[
                io.Combo.Input("checkpoint", options=runtime.list_checkpoints(),
                               tooltip="A checkpoint folder under models/vincie/ (or the embedded model)."),
                io.Combo.Input("dtype", options=list(runtime.DTYPES), default="auto",
                               tooltip="DiT precision. auto: bfloat16 on a GPU, float32 on the CPU."),
                io.Combo.Input("text_encoder", options=list(runtime.TEXT_ENCODER_PLACEMENTS), default="gpu",
                               tooltip="Where the text encoder lives. gpu: on ComfyUI's device, managed (and "
                                       "unloaded when memory is needed) by ComfyUI. cpu: always on the CPU "
                                       "(no VRAM; use it for VINCIE-3B's 14B encoder below ~40 GB VRAM). "
                                       "offload: kept on the CPU, moved to the GPU only while encoding prompts."),
            ],
            outputs=[runtime.ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, text_encoder: str) -> io.NodeOutput:
        return io.NodeOutput(runtime.load_model(checkpoint, dtype, text_encoder))


NODES = [VincieModelLoader]
