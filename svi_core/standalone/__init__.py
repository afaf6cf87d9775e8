"""Standalone backend: Wan models through diffusers / transformers (imported lazily).

Importing this package is cheap; ``svi_core.standalone.models`` imports diffusers and
transformers inside its functions.
"""
