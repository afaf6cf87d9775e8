"""Command line: ``python -m train`` / ``svi-train`` (``torchrun --nproc_per_node N -m train``).

Settings come from a preset (``--preset shot|film``), then a TOML file (``--config``: keys of
:class:`train.config.TrainConfig` at the top level or in a ``[train]`` table, optional
``preset = "film"``), then flags (``--learning_rate 5e-5``; every config field is a flag).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from svi_core.errors import SVIError
from svi_core.log import logger

from .config import FIELD_NAMES, PRESETS, TrainConfig, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svi-train",
        description="Error-Recycling Fine-Tuning (ERFT) of an SVI LoRA for the Wan2.1 I2V DiT.",
    )
    parser.add_argument("--config", help="TOML file of TrainConfig keys")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="shot (default), film, talk or dance"
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    group = parser.add_argument_group("config fields (override the preset and the TOML file)")
    for name in FIELD_NAMES:
        group.add_argument(f"--{name}", dest=f"field_{name}", metavar="VALUE", default=None)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    overrides = {
        name: getattr(args, f"field_{name}")
        for name in FIELD_NAMES
        if getattr(args, f"field_{name}") is not None
    }
    return load_config(args.config, args.preset, **overrides), args


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the exit status (2 on bad input, with the message on stderr)."""
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config, args = parse_config(argv)
        if args.print_config:
            import json

            sys.stdout.write(json.dumps(config.to_dict(), indent=1) + "\n")
            return 0
        from .loop import train

        path = train(config)
    except SVIError as e:
        logger.error("%s", e)
        return 2
    logger.info("done: %s", path)
    return 0
