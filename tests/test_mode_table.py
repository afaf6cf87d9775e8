"""`python -m svi_core modes`: one source of truth for the README's modes table."""

import json
from pathlib import Path

from svi_core.cli import main
from svi_core.mode_table import as_json, markdown
from svi_core.modes import MODES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_modes_table_is_the_generated_one():
    assert markdown() in README.read_text(encoding="utf-8"), (
        "README's modes table differs from `python -m svi_core modes`; paste its output"
    )


def test_modes_json_lists_every_mode_with_its_official_values(capsys):
    assert main(["modes", "--json"]) == 0
    modes = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in modes] == list(MODES)
    film = next(m for m in modes if m["name"] == "film")
    # DESIGN.md §3: film = 5 motion frames, zero padding, CFG 5, 50 steps, shift 5, 24 fps
    assert (film["motion_frames"], film["padding"], film["steps"], film["shift"]) == (
        5,
        "zeros",
        50,
        5.0,
    )
    assert film["guidance_scales"] == {"cfg": 5.0} and film["fps"] == 24.0
    pro = next(m for m in modes if m["name"] == "v2_pro")
    assert pro["overlap_frames"] == 5 and pro["video_frames_for_10_clips"] == 81 + 9 * 76
    assert json.loads(json.dumps(as_json())) == modes


def test_modes_markdown_has_a_row_per_mode(capsys):
    assert main(["modes"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| `") == len(MODES)
