"""Stable Video Infinity for ComfyUI: the ComfyUI entry point (V3 extension).

ComfyUI imports this folder as a package and calls :func:`comfy_entrypoint`, which returns
the extension listing the nodes (``nodes/``). The SVI algorithm is in ``svi_core/`` and never
imports ComfyUI. pytest also imports this file (the repository root is a package), outside
ComfyUI: then there is no ``comfy_api`` and nothing is registered.
"""

from importlib.util import find_spec

if find_spec("comfy_api") is not None:
    from .nodes.extension import SVIExtension, comfy_entrypoint

    __all__ = ["SVIExtension", "comfy_entrypoint"]
