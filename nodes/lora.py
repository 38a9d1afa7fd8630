"""VINCIE LoRA Loader."""

from __future__ import annotations

from comfy_api.latest import io

from . import runtime


class VincieLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VincieLoraLoader",
            display_name="VINCIE LoRA Loader",
            category=runtime.CATEGORY,
            description="Apply a LoRA adapter trained with `vincie train-lora` to a VINCIE model's DiT. Returns a new "
                        "model: the input model is unchanged, so other graphs using it still get the base model. "
                        "Chain several loaders to stack adapters. Adapters live in the 'vincie_loras' model folder "
                        "(adapter folders or .safetensors files); one trained for another base model is refused.",
            inputs=[
                runtime.ModelSocket.Input("model"),
                io.Combo.Input("lora", options=runtime.list_loras(),
                               tooltip="An adapter under models/vincie_loras/ (folder or .safetensors)."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, round=0.01,
                               tooltip="Multiplies the adapter's update: 1 as trained, 0 the base model, "
                                       "negative values push the other way."),
            ],
            outputs=[runtime.ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora: str, strength: float) -> io.NodeOutput:
        return io.NodeOutput(runtime.apply_lora(model, lora, strength))


NODES = [VincieLoraLoader]
