"""Stable Video Infinity core: the SVI algorithm in pure torch + numpy.

Nothing here imports ComfyUI. The standalone (diffusers / transformers) backend lives in
``svi_core.standalone`` and is imported lazily, so the ComfyUI side needs only the runtime
dependencies of ``requirements.txt``.
"""

from .errors import SVIError
from .log import logger

__all__ = ["SVIError", "logger"]
__version__ = "0.1.0"
