"""Error-Recycling Fine-Tuning (ERFT) of SVI LoRAs: config, data, cache, banks, loop, export.

Python API: ``train.loop.train(train.config.preset("shot", dataset=..., ...))`` returns the
exported LoRA path. Command line: ``python -m train --help``.
"""
