"""Dialogue JSONL reading: the three chat layouts, style instructions, malformed lines, demo data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from minmo.demo.script import SENTENCES
from minmo.tts.base import Style
from pipelines.dialogues import DIALOGUE_LAYOUTS, parse_style, read_dialogues, split_records
from schemas.dialogues import DIALOGUES
from schemas.quarantine import QUARANTINE

DATA = Path(__file__).resolve().parents[2] / "jobs" / "data"

NO_STYLE = {
    "style_instruction": None,
    "emotion": None,
    "speaking_rate": None,
    "pitch": None,
    "dialect": None,
}


def write(tmp_path: Path, *lines: object) -> str:
    path = tmp_path / "d.jsonl"
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return str(path)


def read(path: str, layout: str = "auto") -> tuple[list[dict], list[dict]]:
    turns, refused = split_records(read_dialogues(path, layout))
    DIALOGUES.from_rows(turns)
    QUARANTINE.from_rows(refused)
    return turns, refused


def turn(did, index, role, text, layout, uri, language=None, **style) -> dict:
    return {
        "dialogue_id": did,
        "turn_index": index,
        "role": role,
        "text": text,
        "layout": layout,
        "source_uri": uri,
        **NO_STYLE,
        **style,
        "language": language,
    }


def test_chatml_rows_exact(tmp_path):
    path = write(
        tmp_path,
        {
            "id": "c1",
            "language": "en",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": " Hi there "},
                {"role": "assistant", "content": "Hello!"},
            ],
        },
    )
    turns, refused = read(path)
    assert refused == []
    assert turns == [
        turn("c1", 0, "system", "Be brief.", "chatml", path, "en"),
        turn("c1", 1, "user", "Hi there", "chatml", path, "en"),
        turn("c1", 2, "assistant", "Hello!", "chatml", path, "en"),
    ]


def test_sharegpt_rows_exact_and_hashed_id(tmp_path):
    path = write(
        tmp_path,
        {
            "conversations": [
                {"from": "human", "value": "Q1"},
                {"from": "gpt", "value": "A1"},
                {"from": "user", "value": "Q2"},
                {"from": "assistant", "value": "A2"},
            ]
        },
    )
    turns, refused = read(path)
    # The id hashes the file's name, not where it lies, and the line's bytes.
    raw = Path(path).read_bytes().splitlines()[0]
    did = hashlib.sha1(f"{Path(path).name}#1\n".encode() + raw).hexdigest()[:16]
    assert refused == []
    assert turns == [
        turn(did, 0, "user", "Q1", "sharegpt", path),
        turn(did, 1, "assistant", "A1", "sharegpt", path),
        turn(did, 2, "user", "Q2", "sharegpt", path),
        turn(did, 3, "assistant", "A2", "sharegpt", path),
    ]
    # Mounted elsewhere under the same name: the same ids; another name: other ids.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "d.jsonl").write_bytes(Path(path).read_bytes())
    (moved / "e.jsonl").write_bytes(Path(path).read_bytes())
    assert {t["dialogue_id"] for t in read(str(moved / "d.jsonl"))[0]} == {did}
    assert {t["dialogue_id"] for t in read(str(moved / "e.jsonl"))[0]} != {did}


def test_alpaca_rows_exact(tmp_path):
    path = write(
        tmp_path,
        {"id": 7, "instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"id": "8", "instruction": "Say hi.", "input": "", "output": "Hi!"},
    )
    turns, refused = read(path)
    assert refused == []
    assert turns == [
        turn("7", 0, "user", "Translate.\n\nBonjour", "alpaca", path),
        turn("7", 1, "assistant", "Hello", "alpaca", path),
        turn("8", 0, "user", "Say hi.", "alpaca", path),
        turn("8", 1, "assistant", "Hi!", "alpaca", path),
    ]


def test_auto_detects_per_line_and_forced_layout_refuses_others(tmp_path):
    chat = {"id": "a", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}  # fmt: skip
    share = {"id": "b", "conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]}  # fmt: skip
    alpaca = {"id": "c", "instruction": "u", "output": "a"}
    path = write(tmp_path, chat, share, alpaca)
    turns, _ = read(path)
    assert [(r["dialogue_id"], r["layout"]) for r in turns] == [
        ("a", "chatml"),
        ("a", "chatml"),
        ("b", "sharegpt"),
        ("b", "sharegpt"),
        ("c", "alpaca"),
        ("c", "alpaca"),
    ]
    turns, refused = read(path, "sharegpt")
    assert {r["dialogue_id"] for r in turns} == {"b"}
    assert [q["detail"] for q in refused] == [
        "line 1: 'conversations' must be a list (layout sharegpt)",
        "line 3: 'conversations' must be a list (layout sharegpt)",
    ]
    with pytest.raises(ValueError, match="did you mean 'chatml'"):
        list(read_dialogues(path, "chatmll"))
    assert DIALOGUE_LAYOUTS == ("auto", "chatml", "sharegpt", "alpaca")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("speak slowly and sadly", Style(0.8, None, "sad", None, "speak slowly and sadly")),
        ("fast", Style(1.25, None, None, None, "fast")),
        (
            "Very slowly, in a deep voice",
            Style(0.7, 0.85, None, None, "Very slowly, in a deep voice"),
        ),  # fmt: skip
        ("happy", Style(None, None, "happy", None, "happy")),
        ("whisper it", Style(None, None, "whisper", None, "whisper it")),
        ("sad and slow", Style(0.8, None, "sad", None, "sad and slow")),
        ("in a British accent", Style(None, None, None, "en-gb", "in a British accent")),
        (
            "Mexican Spanish, cheerfully",
            Style(None, None, "happy", "es-419", "Mexican Spanish, cheerfully"),
        ),  # fmt: skip
        ("like a pirate", Style(instruction="like a pirate")),
        ("read it to us", Style(instruction="read it to us")),
        ("   ", Style()),
        (None, Style()),
    ],
)
def test_parse_style_text(text, expected):
    assert parse_style(text) == expected


def test_parse_style_dict():
    given = {"emotion": "Happy", "speaking_rate": 1.2, "pitch": 0.9, "dialect": "en-gb"}
    assert parse_style(given) == Style(
        1.2, 0.9, "happy", "en-gb", json.dumps(given, sort_keys=True)
    )
    # explicit keys override what the free-text part says; unknown keys stay in the instruction
    style = parse_style({"instruction": "slowly and sadly", "emotion": "calm", "volume": "loud"})
    assert (style.speaking_rate, style.emotion) == (0.8, "calm")
    assert '"volume": "loud"' in style.instruction
    for bad in ({"speaking_rate": "fast"}, {"pitch": 0}, {"speaking_rate": True}, {"emotion": 3}):
        with pytest.raises(ValueError):
            parse_style(bad)
    with pytest.raises(ValueError):
        parse_style(["slow"])  # type: ignore[arg-type]


def test_styles_land_in_columns(tmp_path):
    path = write(
        tmp_path,
        {
            "id": "s",
            "style": "speak slowly and sadly",
            "messages": [
                {"role": "user", "content": "u", "style": "fast"},
                {"role": "assistant", "content": "a1"},
                {"role": "assistant", "content": "a2", "style": {"emotion": "angry", "pitch": 1.1}},
            ],
        },
    )
    turns, refused = read(path)
    assert refused == []
    cols = [(r["style_instruction"], r["emotion"], r["speaking_rate"], r["pitch"]) for r in turns]
    assert cols == [
        ("fast", None, 1.25, None),
        ("speak slowly and sadly", "sad", 0.8, None),
        ('{"emotion": "angry", "pitch": 1.1}', "angry", None, 1.1),
    ]


GOOD = {"id": "good", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}  # fmt: skip

MALFORMED = [
    (
        "{not json",
        "line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 2",
    ),  # fmt: skip
    ("[1, 2]", "line 2: expected a JSON object, got list", "line 2"),
    (
        {"id": "x", "text": "hi"},
        "line 2: no recognised layout: expected 'messages' (chatml), 'conversations' (sharegpt) or 'instruction' + 'output' (alpaca); keys are ['id', 'text']",
        "line 2",
    ),  # fmt: skip
    ({"id": "x", "messages": []}, "line 2: 'messages' is empty", "x"),
    ({"messages": "hello"}, "line 2: 'messages' must be a list (layout chatml)", "line 2"),
    (
        {"messages": [{"role": "robot", "content": "beep"}]},
        "line 2: message 0: unknown role 'robot', expected one of ['assistant', 'system', 'user']",
        "line 2",
    ),  # fmt: skip
    (
        {"conversations": [{"from": "bot", "value": "x"}]},
        "line 2: message 0: unknown from 'bot', expected one of ['assistant', 'gpt', 'human', 'system', 'user']",
        "line 2",
    ),  # fmt: skip
    (
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
        "line 2: message 0: empty content",
        "line 2",
    ),  # fmt: skip
    (
        {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "a"}]},
        "line 2: message 0: content must be a string, got list",
        "line 2",
    ),  # fmt: skip
    ({"messages": ["hi"]}, "line 2: message 0: expected an object, got str", "line 2"),
    ({"messages": [{"role": "system", "content": "Be nice."}]}, "line 2: no user turn", "line 2"),
    ({"messages": [{"role": "user", "content": "Anyone?"}]}, "line 2: no assistant turn", "line 2"),
    ({"instruction": "", "output": "a"}, "line 2: instruction: empty content", "line 2"),
    (
        {"instruction": "q", "input": 5, "output": "a"},
        "line 2: input: must be a string, got int",
        "line 2",
    ),  # fmt: skip
    (
        {"instruction": "q", "output": None},
        "line 2: output: content must be a string, got NoneType",
        "line 2",
    ),  # fmt: skip
    ({**GOOD, "id": "good"}, "line 2: duplicate dialogue id 'good'", "good"),
    (
        {**GOOD, "id": ["l"]},
        "line 2: 'id' must be a non-empty string or an integer, got ['l']",
        "line 2",
    ),  # fmt: skip
    (
        {**GOOD, "id": "y", "language": 3},
        "line 2: 'language' must be a non-empty string, got 3",
        "y",
    ),  # fmt: skip
    (
        {**GOOD, "id": "z", "style": {"speaking_rate": -1}},
        "line 2: dialogue style: style.speaking_rate must be a positive multiplier, got -1",
        "z",
    ),  # fmt: skip
    (
        {**GOOD, "id": "w", "style": 5},
        "line 2: dialogue style: style must be a string or an object, not int",
        "w",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("line", "detail", "item_key"), MALFORMED)
def test_malformed_line_quarantined_and_neighbours_kept(tmp_path, line, detail, item_key):
    after = {**GOOD, "id": "after"}
    path = write(tmp_path, GOOD, line, "", after)
    turns, refused = read(path)
    assert sorted({r["dialogue_id"] for r in turns}) == ["after", "good"]
    assert refused == [
        {
            "source_uri": path,
            "step": "synthesize",
            "reason_code": "bad_dialogue",
            "detail": detail,
            "item_key": item_key,
            "source_key": None,
        }
    ]


def test_non_utf8_line_quarantined(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe{}\n")
    turns, refused = read(str(path))
    assert len(turns) == 2
    assert refused[0]["detail"].startswith("line 2: not UTF-8")


def test_file_uri_and_determinism(tmp_path):
    path = write(tmp_path, GOOD, {"instruction": "q", "output": "a"}, "oops")
    first = list(read_dialogues(path))
    assert first == list(read_dialogues(path))
    via_uri = list(read_dialogues(f"file://{path}"))
    assert [kind for kind, _ in via_uri] == ["dialogue", "dialogue", "quarantine"]
    assert [p for _, p in via_uri][:2] != [p for _, p in first][:2]  # source_uri differs
    assert via_uri[0][1][0]["source_uri"] == f"file://{path}"


def test_bundled_demo_dialogues_parse_cleanly():
    turns, refused = read(str(DATA / "demo_dialogues.jsonl"))
    assert refused == []
    assert {r["layout"] for r in turns} == {"chatml", "sharegpt", "alpaca"}
    assert {r["language"] for r in turns} >= {"en", "de", "es", "fr", "zh"}
    assert any(r["speaking_rate"] is not None for r in turns)
    assert any(r["emotion"] is not None for r in turns)
    assert all(len(r["text"].split()) <= 15 for r in turns)


def test_bundled_demo_responses_match_demo_transcripts():
    english = {p.text for p in SENTENCES["en"]}
    rows = [json.loads(line) for line in (DATA / "demo_responses.jsonl").read_text().splitlines()]
    assert len(rows) >= 6
    for row in rows:
        assert row["query_text"] in english
        assert 0 < len(row["response"].split()) < 15
