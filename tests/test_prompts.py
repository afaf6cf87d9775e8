import pytest

from svi_core.errors import SVIError
from svi_core.modes import get_mode
from svi_core.prompts import PromptStream, load_prompts, parse_prompts


def test_list_literal_is_parsed_not_executed(tmp_path):
    text = '# header\nprompts = [\n  "a cat walks",\n  "the cat sits",  # comment\n]\n'
    assert parse_prompts(text) == ["a cat walks", "the cat sits"]
    marker = tmp_path / "pwned"
    evil = f'prompts = [__import__("pathlib").Path({str(marker)!r}).touch()]'
    with pytest.raises(SVIError, match="cannot read the prompt list literal"):
        parse_prompts(evil)
    assert not marker.exists()


def test_line_format_skips_comments_and_blanks(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# my prompts\n\nfirst one\n  second one  \n#skip\n", encoding="utf-8")
    assert load_prompts(p) == ["first one", "second one"]


def test_empty_and_missing(tmp_path):
    with pytest.raises(SVIError, match="no prompt found"):
        parse_prompts("# only a comment\n\n")
    with pytest.raises(SVIError, match="no prompt found"):
        parse_prompts("prompts = []")
    with pytest.raises(SVIError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(SVIError, match="empty"):
        PromptStream([], "cycle")


def test_stream_per_mode():
    items = ["a", "b", "c"]
    film = PromptStream.for_mode(items, get_mode("film"))
    assert [film[k] for k in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    v2 = PromptStream.for_mode(items, get_mode("v2"))
    assert [v2[k] for k in range(7)] == ["a", "a", "b", "b", "c", "c", "a"]
    shot = PromptStream.for_mode(items, get_mode("shot"))
    assert {shot[k] for k in range(5)} == {"a"}
    pro = PromptStream.for_mode(items, get_mode("v2_pro"))
    assert [pro[k] for k in range(5)] == ["a", "b", "c", "c", "c"]
    pro_cycle = PromptStream.for_mode(items, get_mode("v2_pro", prompt_policy="cycle"))
    assert [pro_cycle[k] for k in range(5)] == ["a", "b", "c", "a", "b"]


def test_stream_is_generic():
    cond_a, cond_b = object(), object()
    s = PromptStream([cond_a, cond_b], "cycle")
    assert s[0] is cond_a and s[3] is cond_b


def test_pathological_literal_is_refused_cleanly(tmp_path):
    """200k unary minuses overflow Python's parser (MemoryError): one clear SVIError."""
    with pytest.raises(SVIError, match="cannot read the prompt list literal"):
        parse_prompts("prompts = [" + "-" * 200_000 + "1]")
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a" * (4 * 2**20 + 1))
    with pytest.raises(SVIError, match="more than the 4194304 bytes"):
        load_prompts(huge)


TEXTS = [
    ("a cat\n# note\n\n", ["a cat"]),
    ("one\ntwo\n# c\nthree", ["one", "two", "three"]),
    # official test_svi.py:51-52: every non-empty line is a prompt, blank lines only separate
    ("A man walks\ninto a bar.\n\n# comment\nHe orders\n  a drink.\n",
     ["A man walks", "into a bar.", "He orders", "a drink."]),
    ("p1\r\n\r\np2\r\n", ["p1", "p2"]),
    ('prompts = ["x", "y"]', ["x", "y"]),
    ('# official file\nprompts = [\n  "x",  # first\n  "y",\n]\n', ["x", "y"]),
    ('["x", "y"]', ["x", "y"]),
    ("[cinematic] a cat\n[cinematic] a dog", ["[cinematic] a cat", "[cinematic] a dog"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), TEXTS)
def test_one_prompt_rule_for_the_cli_file_and_the_node_text(tmp_path, text, expected):
    """The CLI's --prompts file and the SVI Prompt Stream node's text box are read by the same
    function (svi_core.prompts.parse_prompts): one prompt per non-empty line as the official
    script, '#' comments, or a prompts = [...] literal (issue 10, 11)."""
    assert parse_prompts(text) == expected
    f = tmp_path / "p.txt"
    f.write_bytes(text.encode("utf-8"))
    assert load_prompts(f) == expected


def test_bad_prompt_lists_are_refused():
    with pytest.raises(SVIError, match="no prompt"):
        parse_prompts("# only a comment\n\n")
    with pytest.raises(SVIError, match="cannot read the prompt list literal"):
        parse_prompts('prompts = ["x", __import__("os")]')
    with pytest.raises(SVIError, match="list of strings"):
        parse_prompts("prompts = [1, 2]")
