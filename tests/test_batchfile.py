"""Prompt files: every format, permutations, normalisation, rejects, image inlining, stable job ids."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from worker.batchfile import (
    BatchFileError,
    Defaults,
    RowError,
    default_batch_id,
    expand_permutations,
    normalise,
    read_batch_file,
)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def png_bytes(color: str = "red", size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def rejects(path: Path) -> list[dict[str, str]]:
    with path.with_name(path.name + ".rejected.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------- prompt text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/imagine prompt: a cat", "a cat"),
        ("  /IMAGINE   Prompt :a cat  ", "a cat"),
        ("/imagine a cat", "a cat"),
        ("/imagine prompt a cat", "a cat"),
        ("/imagine promptly", "promptly"),
        ("a cat —ar 16:9 –v 6", "a cat --ar 16:9 --v 6"),
        ("—no text", "--no text"),
        ("a cat \u2014 sleeping", "a cat \u2014 sleeping"),  # a prose dash is not a parameter
        ("cat—dog friendship", "cat—dog friendship"),  # nor is a dash inside a word
        ("a\tcat\n\n on  a   mat ", "a cat on a mat"),
        ("keep /imagine inside", "keep /imagine inside"),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_permutations_simple_nested_escaped_and_parameters() -> None:
    assert expand_permutations("a {red, green} bird") == ["a red bird", "a green bird"]
    assert expand_permutations("a {red, {light, dark} green} bird") == [
        "a red bird",
        "a light green bird",
        "a dark green bird",
    ]
    assert expand_permutations(r"a {red\, hot, cold} soup") == ["a red, hot soup", "a cold soup"]
    assert expand_permutations("cat --ar {1:1, 2:3}") == ["cat --ar 1:1", "cat --ar 2:3"]
    assert expand_permutations("no braces, just commas") == ["no braces, just commas"]
    assert expand_permutations("{a, a} b") == ["a b"]  # the same prompt is not paid for twice


def test_permutation_cap_and_syntax_errors() -> None:
    ten = "{" + ", ".join("abcdefghij") + "}"
    assert len(expand_permutations(f"{ten} {ten}", cap=100)) == 100
    with pytest.raises(RowError, match="1000 permutations, more than the cap of 100"):
        expand_permutations(f"{ten} {ten} {ten}", cap=100)
    with pytest.raises(RowError, match="unclosed"):
        expand_permutations("a {b, c")
    with pytest.raises(RowError, match="unmatched"):
        expand_permutations("a b}")
    with pytest.raises(RowError, match="nested deeper"):
        expand_permutations("{" * 20 + "x" + "}" * 20)


# ---------------------------------------------------------------------------------------------- formats


def test_txt_comments_blank_lines_defaults_and_mode_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.txt",
        "# a comment\n\n/imagine prompt: a cat\n  # indented comment\na dog --relax\na {red, blue} fox\n",
    )
    plan = read_batch_file(path, Defaults(mode="turbo", priority=3, tags=("night",)))
    assert [(j.row, j.prompt, j.mode) for j in plan.jobs] == [
        (3, "a cat", "turbo"),
        (5, "a dog --relax", "relax"),
        (6, "a red fox", "turbo"),
        (6, "a blue fox", "turbo"),
    ]
    assert all(j.priority == 3 and j.tags == ("night",) and j.bot_type == "MID_JOURNEY" for j in plan.jobs)
    assert plan.count_by_mode() == {"turbo": 3, "relax": 1}
    assert not plan.rejected
    assert plan.write_rejects() is None


def test_csv_all_columns_quotes_and_ignored_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        "Prompt,id,mode,bot,priority,tags,notes\n"
        '"a cat, sitting",cat-1,relax,niji,2,"pets;cute",ignore me\n'
        '"a multi\nline prompt",,,,,,\n'
        "a dog,,FAST,mj,,,\n",
    )
    plan = read_batch_file(path)
    cat, multi, dog = plan.jobs
    assert (cat.job_id, cat.prompt, cat.mode, cat.bot_type, cat.priority, cat.tags) == (
        "cat-1",
        "a cat, sitting",
        "relax",
        "NIJI_JOURNEY",
        2,
        ("pets", "cute"),
    )
    assert (multi.row, multi.prompt, multi.mode) == (3, "a multi line prompt", "fast")
    assert (dog.row, dog.mode) == (5, "fast")
    assert plan.warnings == [
        "ignored columns: notes (known: prompt, id, mode, bot, images, then, priority, tags, split, upstream)"
    ]


def test_csv_without_prompt_column_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(BatchFileError, match="no 'prompt' column"):
        read_batch_file(write(tmp_path / "p.csv", "text,mode\na cat,fast\n"))
    with pytest.raises(BatchFileError, match="unknown prompt file type"):
        read_batch_file(write(tmp_path / "p.xlsx", "x"))
    with pytest.raises(BatchFileError, match="cannot read"):
        read_batch_file(tmp_path / "missing.txt")


def test_jsonl_lists_and_types(tmp_path: Path) -> None:
    rows = [
        {"prompt": "a cat", "id": 7, "mode": "relax", "tags": ["a", "b"], "priority": 0},
        {"prompt": "a dog", "images": ["https://example.com/ref.png"], "extra": "ignored"},
    ]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    cat, dog = read_batch_file(path).jobs
    assert (cat.job_id, cat.mode, cat.tags, cat.priority) == ("7", "relax", ("a", "b"), 0)
    assert dog.prompt == "https://example.com/ref.png a dog"  # URL image prompts go in front of the text
    assert dog.base64_array == ()


# ---------------------------------------------------------------------------------------------- rejects


def test_invalid_rows_go_to_rejected_csv_and_the_rest_runs(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "good one"}),  # 1
        json.dumps({"prompt": "   "}),  # 2 empty
        json.dumps({"prompt": "x", "mode": "ludicrous"}),  # 3 bad mode
        json.dumps({"prompt": "x", "bot": "dalle"}),  # 4 bad bot
        json.dumps({"prompt": "x", "priority": "high"}),  # 5 bad priority
        json.dumps({"prompt": "x", "priority": 12}),  # 6 priority out of range
        json.dumps({"prompt": "x", "id": "has space"}),  # 7 bad id
        '{"prompt": "broken',  # 8 invalid JSON
        json.dumps(["prompt", "in a list"]),  # 9 not an object
        json.dumps({"prompt": "/imagine prompt:"}),  # 10 empty after normalisation
        json.dumps({"prompt": "a {b, c"}),  # 11 unbalanced
        json.dumps({"prompt": "x" * 70_000}),  # 12 huge row
        json.dumps({"prompt": "y", "id": "dup"}),  # 13
        json.dumps({"prompt": "z", "id": "dup"}),  # 14 duplicate id
        json.dumps({"prompt": 5}),  # 15 accepted: number as text
        json.dumps({"prompt": {"nested": 1}}),  # 16 wrong type
        json.dumps({"prompt": "q", "images": ["missing.png"]}),  # 17 unreadable image
        json.dumps({"prompt": "q", "tags": ["t" * 65]}),  # 18 tag too long
    ]
    data = (
        ("\n".join(lines[:2]) + "\n").encode()
        + b'{"prompt": "bad \xff byte"}\n'
        + ("\n".join(lines[2:]) + "\n").encode()
    )
    path = write(tmp_path / "mixed.jsonl", data)
    plan = read_batch_file(path)
    assert [j.prompt for j in plan.jobs] == ["good one", "y", "5"]
    got = {(int(r.row), r.field) for r in plan.rejected}
    expected = {
        (2, "prompt"),
        (3, "prompt"),
        (4, "mode"),
        (5, "bot"),
        (6, "priority"),
        (7, "priority"),
        (8, "id"),
        (9, "line"),
        (10, "line"),
        (11, "prompt"),
        (12, "prompt"),
        (13, "line"),
        (15, "id"),
        (17, "prompt"),
        (18, "images"),
        (19, "tags"),
    }
    assert got == expected
    reasons = {r.row: r.reason for r in plan.rejected}
    assert reasons[3] == "not valid UTF-8"
    assert "unknown mode 'ludicrous'" in reasons[4]
    assert "already used by row 14" in reasons[15]
    assert "missing.png: cannot read" in reasons[18]
    assert plan.write_rejects() == tmp_path / "mixed.jsonl.rejected.csv"
    written = rejects(path)
    assert [(int(r["row"]), r["field"]) for r in written] == sorted(expected)
    assert all(r["reason"] for r in written)
    # Fix the file: the stale rejects file goes away.
    write(path, json.dumps({"prompt": "fine"}) + "\n")
    assert read_batch_file(path).write_rejects() is None
    assert not (tmp_path / "mixed.jsonl.rejected.csv").exists()


def test_csv_rejects_rows_with_too_many_cells_and_bad_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", b"prompt,mode\na cat,fast\nb,fast,extra\n\xc3\x28 bad,fast\nok,relax\n")
    plan = read_batch_file(path)
    assert [j.prompt for j in plan.jobs] == ["a cat", "ok"]
    assert [(r.row, r.field) for r in plan.rejected] == [(3, "line"), (4, "prompt")]


def test_permutation_cap_is_a_row_reject(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "{a,b,c} {d,e,f}\nfine\n")
    plan = read_batch_file(path, max_permutations=5)
    assert [j.prompt for j in plan.jobs] == ["fine"]
    assert plan.rejected[0].reason == "9 permutations, more than the cap of 5"


# ---------------------------------------------------------------------------------------------- images


def test_local_images_become_data_uris_read_once(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    write(tmp_path / "refs" / "red.png", png_bytes("red"))
    write(tmp_path / "refs" / "blue.png", png_bytes("blue"))
    write(tmp_path / "refs" / "fake.png", b"not an image at all")
    rows = [
        {"prompt": "one", "images": "refs/red.png; refs/blue.png"},
        {"prompt": "two", "images": ["refs/red.png", "https://x.test/a.jpg"]},
        {"prompt": "three", "images": str(tmp_path / "refs" / "fake.png")},
    ]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows))
    plan = read_batch_file(path)
    one, two = plan.jobs
    assert len(one.base64_array) == 2
    assert one.base64_array[0].startswith("data:image/png;base64,")
    assert base64.b64decode(one.base64_array[0].split(",", 1)[1]) == png_bytes("red")
    assert two.base64_array == (one.base64_array[0],)
    assert two.prompt == "https://x.test/a.jpg two"
    assert two.task_kwargs("b1")["base64_array"] == [one.base64_array[0]]
    [bad] = plan.rejected
    assert (bad.row, bad.field) == (3, "images")


def test_image_too_big_is_rejected_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.write(png_bytes())
        fh.truncate(5 * 1024 * 1024)
    plan = read_batch_file(write(tmp_path / "p.csv", "prompt,images\nx,big.png\n"))
    assert plan.jobs == []
    assert "more than 4194304" in plan.rejected[0].reason


# ---------------------------------------------------------------------------------------------- plans


def test_follow_up_plans_are_validated_per_row_and_default(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "prompt,then\na,U1-4\nb,U9\nc,\n")
    plan = read_batch_file(path, Defaults(then="U1"))
    assert [(j.prompt, j.then) for j in plan.jobs] == [("a", "U1-4"), ("c", "U1")]
    assert [(r.row, r.field) for r in plan.rejected] == [(3, "then")]
    assert plan.followups_by_plan() == {"U1-4": 1, "U1": 1}
    with pytest.raises(RowError):
        read_batch_file(path, Defaults(then="nonsense>>"))


def test_region_masks_are_read_relative_to_the_prompt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masks are checked when the file is read, relative to its folder, and kept as absolute paths."""
    (tmp_path / "masks").mkdir()
    write(tmp_path / "masks" / "hat.png", png_bytes("white"))
    write(tmp_path / "masks" / "fake.png", b"not an image")
    rows = ['a,"U1>region:masks/hat.png:""a hat"""', "b,U1>region:masks/none.png", "c,U2>region:masks/fake.png"]
    path = write(tmp_path / "p.csv", "\n".join(["prompt,then", *rows, ""]))
    monkeypatch.chdir(tmp_path / "masks")  # not the folder the paths are relative to
    plan = read_batch_file(path)
    [job] = plan.jobs
    from worker.plans.grammar import Action, parse

    region = parse(job.then or "").sequences[0].steps[1]
    assert isinstance(region, Action) and region.args == (str((tmp_path / "masks" / "hat.png").resolve()), "a hat")
    assert [(r.row, r.field) for r in plan.rejected] == [(3, "then"), (4, "then")]
    assert "none.png" in plan.rejected[0].reason and "cannot read" in plan.rejected[0].reason
    assert "not a JPEG" in plan.rejected[1].reason


def test_speed_mode_is_read_per_normalised_variant(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.txt",
        "a dog —relax\na cat {--relax, --fast, —turbo}\na fox {red, blue} --relax\nan owl\n",
    )
    plan = read_batch_file(path, Defaults(mode="turbo"))
    assert [(j.prompt, j.mode) for j in plan.jobs] == [
        ("a dog --relax", "relax"),
        ("a cat --relax", "relax"),
        ("a cat --fast", "fast"),
        ("a cat --turbo", "turbo"),
        ("a fox red --relax", "relax"),
        ("a fox blue --relax", "relax"),
        ("an owl", "turbo"),
    ]
    csv_path = write(tmp_path / "p.csv", 'prompt,mode\n"a cat {--relax, --fast}",turbo\n')
    assert {j.mode for j in read_batch_file(csv_path).jobs} == {"turbo"}  # the mode column wins


# ---------------------------------------------------------------------------------------------- job ids


def ids_of(path: Path, scope: str | None = None, defaults: Defaults | None = None) -> dict[str, str]:
    return {j.prompt: j.job_id for j in read_batch_file(path, defaults, scope=scope).jobs}


def test_automatic_ids_survive_comments_reordering_and_new_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "night.txt", "# v1\na {cat, dog}\na fox\n")
    first = ids_of(path, "night")
    assert len(set(first.values())) == 3 and all(i.startswith("night-") for i in first.values())
    write(path, "# v2: longer comment\n\n# one more\nan owl\na fox\n\n# moved\na {cat, dog}\n")
    again = ids_of(path, "night")
    assert {p: again[p] for p in first} == first  # nothing done is paid for again
    assert again["an owl"] not in first.values()


def test_automatic_ids_key_on_content_and_occurrence(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "same\nsame\nother\n")
    jobs = read_batch_file(path, scope="b").jobs
    assert [j.prompt for j in jobs] == ["same", "same", "other"]
    assert len({j.job_id for j in jobs}) == 3  # a prompt listed twice runs twice ...
    write(path, "other\nsame\nnew\nsame\n")
    assert {j.job_id for j in jobs} <= {j.job_id for j in read_batch_file(path, scope="b").jobs}  # ... once each
    base = ids_of(path, "b")["other"]
    assert ids_of(path, "b", Defaults(mode="relax"))["other"] != base  # mode, plan and bot are part of a job
    assert ids_of(path, "b", Defaults(then="U1"))["other"] != base
    assert ids_of(path, "b", Defaults(bot="niji"))["other"] != base
    assert ids_of(path, "b", Defaults(priority=1, tags=("x",)))["other"] == base  # labels are not
    assert ids_of(path, "another batch")["other"] != base


def test_same_file_name_in_two_folders_does_not_collide(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write(tmp_path / "a" / "night run.txt", "a cat\n")
    two = write(tmp_path / "b" / "night run.txt", "a cat\n")
    assert default_batch_id(one) != default_batch_id(two)
    assert default_batch_id(one).startswith("night-run-")
    assert ids_of(one) != ids_of(two)  # each file's own batch by default
    assert ids_of(one, "shared") == ids_of(two, "shared")  # a moved file resumes its batch when told which


def test_inline_images_are_part_of_the_automatic_id(tmp_path: Path) -> None:
    write(tmp_path / "red.png", png_bytes("red"))
    write(tmp_path / "blue.png", png_bytes("blue"))
    path = write(tmp_path / "p.csv", "prompt,images\na cat,red.png\na cat,blue.png\n")
    red, blue = read_batch_file(path, scope="b").jobs
    assert red.prompt == blue.prompt and red.job_id != blue.job_id
    write(path, "prompt,images\na cat,blue.png\n")
    assert [j.job_id for j in read_batch_file(path, scope="b").jobs] == [blue.job_id]


def test_row_id_with_permutations_gets_suffixes(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'id,prompt\nrow-a,"x {1, 2}"\nrow-b,y\n')
    assert [j.job_id for j in read_batch_file(path).jobs] == ["row-a.1", "row-a.2", "row-b"]


def test_task_kwargs_shape() -> None:
    from dataclasses import replace

    from worker.batchfile import BatchJob

    job = BatchJob(
        job_id="j1", row=1, prompt="p", mode="relax", bot_type="NIJI_JOURNEY", then="U1", priority=4
    )
    assert job.task_kwargs("b") == {
        "prompt": "p",
        "bot_type": "NIJI_JOURNEY",
        "mode": "relax",
        "job_id": "j1",
        "batch_id": "b",
        "then": "U1",
        "priority": 4,
        "row": 1,
    }
    assert "row" not in replace(job, row=0).task_kwargs(None)  # a single prompt has no file row
