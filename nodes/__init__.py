"""ComfyUI nodes of comfyui-vincie: thin V3 nodes over ``vincie_sdk``.

``convert`` (ComfyUI values <-> SDK values, mask geometry) imports nothing from ComfyUI; ``runtime``
(checkpoints, model cache, devices, progress) and the node modules need ComfyUI. Importing this package
imports none of them.
"""
