"""The fixture data sets, their loader's validation errors, and the GRPO rewards."""

import json
import warnings

import pytest

from mlxth.fixtures import load_fixture
from mlxth.fixtures.datasets import (
    DEFAULT_FILES,
    SCHEMAS,
    DatasetError,
    DatasetTruncationWarning,
    load_dataset,
)
from mlxth.fixtures.rewards import DEFAULT_REWARDS, exact_match_reward, format_reward

PREF = {"prompt": "Q: 1+1=\nA:", "chosen": " 2", "rejected": " 3"}
KTO = {"prompt": "Q: 1+1=\nA:", "completion": " 2", "label": True}
GRPO = {"prompt": "1+1=", "answer": "2"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_fixture("tiny-llama")[1]


def write(tmp_path, lines, name="data.jsonl"):
    """Write ``lines`` (dicts become JSON, strings are written as they are)."""
    path = tmp_path / name
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def error(kind, path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(kind, path, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# --- arguments and files ----------------------------------------------------


def test_unknown_kind_names_known_kinds():
    msg = error("dpo", None)
    assert "'dpo'" in msg
    for kind in SCHEMAS:
        assert kind in msg


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    msg = error("preference", path)
    assert str(path) in msg and "not found" in msg


def test_directory_instead_of_file(tmp_path):
    assert str(tmp_path) in error("grpo", tmp_path)


@pytest.mark.parametrize("lines", [[], ["", "   ", ""]])
def test_empty_file(tmp_path, lines):
    path = write(tmp_path, lines, name="empty.jsonl")
    msg = error("kto", path)
    assert "empty.jsonl" in msg and "empty" in msg.split("empty.jsonl", 1)[1]


def test_max_length_needs_tokenizer(tmp_path):
    msg = error("preference", write(tmp_path, [PREF]), max_length=32)
    assert "max_length" in msg and "tokenizer" in msg


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True])
def test_max_length_must_be_positive_int(tmp_path, tokenizer, bad):
    assert "max_length" in error("grpo", write(tmp_path, [GRPO]), tokenizer=tokenizer, max_length=bad)


def test_unknown_overflow_names_allowed_values(tmp_path):
    msg = error("preference", write(tmp_path, [PREF]), overflow="drop")
    assert "'drop'" in msg and "'error'" in msg and "'truncate'" in msg


# --- row validation ---------------------------------------------------------


def test_blank_lines_skipped_and_extra_fields_kept(tmp_path):
    path = write(tmp_path, ["", dict(PREF, source="hand"), "   ", "", PREF, ""])
    rows = load_dataset("preference", path)
    assert len(rows) == 2
    assert rows[0] == dict(PREF, source="hand") and rows[1] == PREF


def test_malformed_json_names_line_and_column(tmp_path):
    path = write(tmp_path, [PREF, "", '{"prompt": "x", "chosen": }'], name="broken.jsonl")
    msg = error("preference", path)
    assert "broken.jsonl:3:" in msg
    assert "column 27" in msg and "Expecting value" in msg


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(json.dumps(GRPO).encode() + b'\n{"prompt": "\xff", "answer": "1"}\n')
    msg = error("grpo", path)
    assert "bytes.jsonl:2:" in msg and "UTF-8" in msg


@pytest.mark.parametrize("line, got", [("[1, 2]", "array"), ('"text"', "str"), ("null", "null"), ("7", "int")])
def test_non_object_line(tmp_path, line, got):
    msg = error("kto", write(tmp_path, [KTO, KTO, line], name="kto.jsonl"))
    assert "kto.jsonl:3:" in msg and "object" in msg and got in msg


@pytest.mark.parametrize("kind, row", [("preference", PREF), ("kto", KTO), ("grpo", GRPO)])
def test_missing_field(tmp_path, kind, row):
    for field in SCHEMAS[kind]:
        bad = {k: v for k, v in row.items() if k != field}
        msg = error(kind, write(tmp_path, [row, bad], name=f"{kind}.jsonl"))
        assert f"{kind}.jsonl:2:" in msg and f"'{field}'" in msg and "missing" in msg


@pytest.mark.parametrize(
    "kind, row, field, value, expected, got",
    [
        ("preference", PREF, "chosen", 5, "string", "int"),
        ("preference", PREF, "rejected", True, "string", "bool"),  # bool is not a string
        ("preference", PREF, "prompt", None, "string", "null"),
        ("preference", PREF, "chosen", ["a"], "string", "array"),
        ("kto", KTO, "label", 1, "boolean", "int"),  # an int is not a bool
        ("kto", KTO, "label", "true", "boolean", "str"),
        ("kto", KTO, "completion", {"text": "x"}, "string", "object"),
        ("grpo", GRPO, "answer", 2, "string", "int"),
        ("grpo", GRPO, "answer", 2.0, "string", "float"),
    ],
)
def test_wrong_type(tmp_path, kind, row, field, value, expected, got):
    path = write(tmp_path, [row, row, row, row, row, row, dict(row, **{field: value})], name=f"{kind}.jsonl")
    msg = error(kind, path)
    assert f"{kind}.jsonl:7:" in msg and f"field '{field}'" in msg
    assert f"expected a {expected}" in msg and f"got {got}" in msg


def test_wrong_type_message_format(tmp_path):
    lines = [PREF] * 6 + [dict(PREF, chosen=3)]
    msg = error("preference", write(tmp_path, lines, name="preference.jsonl"))
    assert msg.endswith("preference.jsonl:7: field 'chosen': expected a string, got int")


@pytest.mark.parametrize(
    "kind, row, field",
    [("preference", PREF, "prompt"), ("preference", PREF, "chosen"), ("preference", PREF, "rejected"),
     ("kto", KTO, "prompt"), ("kto", KTO, "completion"), ("grpo", GRPO, "prompt")],
)
def test_empty_string_refused(tmp_path, kind, row, field):
    msg = error(kind, write(tmp_path, [dict(row, **{field: ""})], name=f"{kind}.jsonl"))
    assert f"{kind}.jsonl:1:" in msg and f"field '{field}'" in msg and "empty" in msg


def test_first_error_is_reported(tmp_path):
    path = write(tmp_path, [PREF, dict(PREF, chosen=1), "{oops", {"prompt": "p"}], name="many.jsonl")
    msg = error("preference", path)
    assert "many.jsonl:2:" in msg and "'chosen'" in msg
    assert ":3:" not in msg and ":4:" not in msg


def test_loader_raises_only_dataset_errors(tmp_path):
    lines = ["{", "[]", "{}", '{"prompt": 1}', '{"prompt": "a", "answer": false}', "NaN"]
    for i, line in enumerate(lines):
        path = write(tmp_path, [line], name=f"bad{i}.jsonl")
        with pytest.raises(DatasetError, match=f"bad{i}.jsonl:1:"):
            load_dataset("grpo", path)


# --- tokenization, refusal, truncation ----------------------------------------


def test_tokenized_ids(tmp_path, tokenizer):
    eos = tokenizer.eos_token_id
    rows = load_dataset("preference", write(tmp_path, [PREF]), tokenizer=tokenizer)
    row = rows[0]
    assert row["prompt_ids"] == list(PREF["prompt"].encode())
    assert row["chosen_ids"] == list(PREF["chosen"].encode()) + [eos]
    assert row["rejected_ids"] == list(PREF["rejected"].encode()) + [eos]
    assert all(type(t) is int for t in row["prompt_ids"] + row["chosen_ids"])
    assert "truncated" not in row

    kto = load_dataset("kto", write(tmp_path, [KTO]), tokenizer=tokenizer)[0]
    assert kto["completion_ids"] == list(KTO["completion"].encode()) + [eos]

    grpo = load_dataset("grpo", write(tmp_path, [GRPO]), tokenizer=tokenizer)[0]
    assert grpo["prompt_ids"] == list(GRPO["prompt"].encode())
    assert set(grpo) == {"prompt", "answer", "prompt_ids"}


def test_overflow_refused_by_default(tmp_path, tokenizer):
    long_row = dict(PREF, rejected=" " + "9" * 30)  # prompt 10 + rejected 31 + eos = 42
    path = write(tmp_path, [PREF, long_row], name="pref.jsonl")
    msg = error("preference", path, tokenizer=tokenizer, max_length=20)
    assert "pref.jsonl:2:" in msg and "field 'rejected'" in msg
    assert "42" in msg and "20" in msg
    assert "refused" in msg and 'overflow="truncate"' in msg


def test_overflow_truncated_with_warning(tmp_path, tokenizer):
    eos = tokenizer.eos_token_id
    long_row = dict(PREF, chosen=" " + "1" * 15, rejected=" 3")  # chosen: 16 bytes + eos
    path = write(tmp_path, [PREF, long_row], name="pref.jsonl")
    with pytest.warns(DatasetTruncationWarning) as record:
        rows = load_dataset("preference", path, tokenizer=tokenizer, max_length=20, overflow="truncate")
    assert len(record) == 1
    assert issubclass(record[0].category, UserWarning)
    msg = str(record[0].message)
    assert "pref.jsonl:2:" in msg and "field 'chosen'" in msg and "17" in msg and "10" in msg
    assert record[0].filename == __file__  # points at the caller

    short, cut = rows
    assert "truncated" not in short and short["chosen_ids"][-1] == eos  # a row that fits keeps its EOS
    assert cut["truncated"] is True
    assert cut["prompt_ids"] == list(PREF["prompt"].encode())  # prompt kept whole
    assert cut["chosen_ids"] == list(long_row["chosen"].encode())[:10]  # cut from the end; EOS gone
    assert eos not in cut["chosen_ids"]
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == 20
    assert cut["rejected_ids"] == list(b" 3") + [eos]  # the other completion untouched
    assert cut["chosen"] == long_row["chosen"]  # the text itself is left as it was


def test_truncation_that_only_drops_eos(tmp_path, tokenizer):
    row = dict(KTO, completion=" " + "7" * 9)  # prompt 10 + completion 10 + eos = 21
    path = write(tmp_path, [row], name="kto.jsonl")
    with pytest.warns(DatasetTruncationWarning, match=r"kto\.jsonl:1: field 'completion'.*11 to 10"):
        rows = load_dataset("kto", path, tokenizer=tokenizer, max_length=20, overflow="truncate")
    assert rows[0]["completion_ids"] == list(row["completion"].encode())


def test_exact_fit_not_truncated(tmp_path, tokenizer):
    row = dict(KTO, completion=" " + "7" * 8)  # 10 + 9 + eos = 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = load_dataset("kto", write(tmp_path, [row]), tokenizer=tokenizer, max_length=20)
    assert rows[0]["completion_ids"][-1] == tokenizer.eos_token_id and "truncated" not in rows[0]


@pytest.mark.parametrize("overflow", ["error", "truncate"])
def test_prompt_too_long_refused_even_when_truncating(tmp_path, tokenizer, overflow):
    row = dict(PREF, prompt="Q: " + "1+" * 10 + "1=\nA:")  # 28 bytes
    path = write(tmp_path, [PREF, PREF, row], name="pref.jsonl")
    msg = error("preference", path, tokenizer=tokenizer, max_length=20, overflow=overflow)
    assert "pref.jsonl:3:" in msg and "field 'chosen'" in msg and "refused" in msg
    assert "prompt alone is 28" in msg and "20" in msg


@pytest.mark.parametrize("overflow", ["error", "truncate"])
def test_grpo_prompt_too_long_refused(tmp_path, tokenizer, overflow):
    path = write(tmp_path, [GRPO, dict(GRPO, prompt="1+" * 8 + "1=")], name="grpo.jsonl")
    msg = error("grpo", path, tokenizer=tokenizer, max_length=12, overflow=overflow)
    assert "grpo.jsonl:2:" in msg and "field 'prompt'" in msg and "18" in msg and "12" in msg
    assert "refused" in msg
    assert len(load_dataset("grpo", path, tokenizer=tokenizer, max_length=19)) == 2


# --- the shipped files --------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_default_files_load(kind):
    assert DEFAULT_FILES[kind].name == f"{kind}.jsonl" and DEFAULT_FILES[kind].is_file()
    rows = load_dataset(kind)
    assert len(rows) >= 24
    assert set(rows[0]) == set(SCHEMAS[kind])


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_default_files_fit_max_length_64(kind, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = load_dataset(kind, tokenizer=tokenizer, max_length=64)
    assert not any(r.get("truncated") for r in rows)


def test_kto_labels_balanced_and_interleaved():
    labels = [r["label"] for r in load_dataset("kto")]
    assert abs(sum(labels) - len(labels) / 2) <= len(labels) / 8
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_preference_pairs_differ():
    for row in load_dataset("preference"):
        assert row["chosen"] != row["rejected"]


def test_kto_true_labels_hold_the_right_sum():
    for row in load_dataset("kto"):
        a, b = int(row["prompt"][3]), int(row["prompt"][5])
        assert row["label"] == (row["completion"] == f" {a + b}")


def test_grpo_answers_are_digit_strings_matching_the_sum():
    for row in load_dataset("grpo"):
        assert row["answer"].lstrip("-").isdigit()
        assert exact_match_reward(row["prompt"], " " + row["answer"], row) == 1.0
        a, op, b = row["prompt"][0], row["prompt"][1], row["prompt"][2]
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


# --- rewards ------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        (" 9", "9", 1.0),
        ("9", " 9 ", 1.0),  # the answer is stripped
        ("The answer is 12.", "12", 1.0),
        ("12 or 13", "13", 0.0),  # only the first number counts
        ("123", "12", 0.0),  # the whole run of digits, not a prefix
        ("-3", "-3", 1.0),
        ("-3", "3", 0.0),
        ("5-3", "5", 1.0),
        ("nine", "9", 0.0),
        ("", "9", 0.0),
        ("٩", "9", 0.0),  # non-ASCII digits are not digits here
    ],
)
def test_exact_match_reward(completion, answer, expected):
    assert exact_match_reward("4+5=", completion, {"prompt": "4+5=", "answer": answer}) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [("", 0.0), ("9", 1.0), (" 9", 0.5), ("abc", 0.0), ("12ab", 0.5), ("1 2 3 ", 0.5), ("٩٩", 0.0)],
)
def test_format_reward(completion, expected):
    assert format_reward("4+5=", completion, {"answer": "9"}) == pytest.approx(expected)


def test_default_rewards():
    assert DEFAULT_REWARDS == [(exact_match_reward, 1.0), (format_reward, 0.5)]
    row = {"prompt": "4+5=", "answer": "9"}
    total = sum(w * fn(row["prompt"], " 9", row) for fn, w in DEFAULT_REWARDS)
    assert total == pytest.approx(1.25)
    for fn, _ in DEFAULT_REWARDS:
        assert isinstance(fn("4+5=", "x", row), float)
