"""A procedural toy world and a tiny Wan-architecture model trained on it.

``world`` makes seeded, deterministic toy videos on a CPU (shapes moving over a textured
background with camera motion and lighting change); ``demo`` runs the real clip loop with the
tiny toy models shipped in ``svi_core/assets`` and writes a drift report, with no download.
"""
