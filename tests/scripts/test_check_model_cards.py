"""scripts/check_model_cards.py: the cards' quoted `dvis evaluate` commands and their numbers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts.conftest import REPO, load_script, run_script

cards = load_script("scripts/check_model_cards.py")
CARDS = sorted((REPO / "models").glob("*/MODEL_CARD.md"))
PLACEHOLDERS = ("REL/", "CHIPS", "DUBAI_VAL")


@pytest.mark.parametrize("card", CARDS, ids=[c.parent.name for c in CARDS])
def test_every_card_quotes_evaluate_commands_of_its_own_model(card: Path) -> None:
    quotes = cards.quoted_commands(card.read_text())
    assert quotes, f"{card}: quotes no dvis evaluate command"
    for q in quotes:
        assert q.argv[:2] == ["dvis", "evaluate"]
        assert cards.option(q.argv, "-m", "--model") == card.parent.name
        assert (cards.option(q.argv, "--task") or "") in cards.HEADLINE
        assert (cards.option(q.argv, "--data") or "").startswith(PLACEHOLDERS)  # the script can fill it in
        assert cards._NUMBER.search(q.section)  # the section states numbers


SECTION = """```console
$ dvis evaluate --task change -m m --data REL/x \\
      --tile-size 256   # a comment
```

| precision | recall | F1 | IoU |
|---|---|---|---|
| 0.686 | 0.294 | **0.411** | 0.259 |

Float F1 0.7; the retrieval one is `dvis evaluate --task retrieval -m m --data CHIPS
--split train`: mAP@20 0.676.

## Next
0.999
"""


def test_quoted_commands_console_continuations_comments_and_inline_spans() -> None:
    first, second = cards.quoted_commands(SECTION)
    assert first.argv == ["dvis", "evaluate", "--task", "change", "-m", "m", "--data", "REL/x",
                          "--tile-size", "256"] and first.line == 2
    assert second.argv[-4:] == ["--data", "CHIPS", "--split", "train"] and second.line == 10
    assert "0.999" not in first.section and "0.676." in first.section  # up to the next heading


@pytest.mark.parametrize(("measured", "ok"), [(0.4114, True), (0.4119, True), (0.4125, False), (0.676, True),
                                              (0.9990, False), (0.7, True), (0.5, False)])
def test_compare_finds_the_stated_number_within_tolerance(measured: float, ok: bool) -> None:
    (row,) = cards.compare(cards.quoted_commands(SECTION)[0].section, {"F1": measured}, 0.001)
    assert row["ok"] is ok


def test_headline_reads_detection_and_retrieval_reports() -> None:
    assert cards.headline("detect", {"metrics": {"ap": 0.1, "ap50": 0.4, "ap75": -1.0, "ar100": 0.3}}) == {
        "AP": 0.1, "AP50": 0.4, "AR100": 0.3}  # COCO's -1 (no such objects) is not a number to state
    report = {"results": [{"representation": "float", "map": 0.7, "precision": 0.6},
                          {"representation": "binary", "map": 0.68, "precision": 0.63}]}
    assert cards.headline("retrieval", report) == {
        "binary mAP@k": 0.68, "binary precision@k": 0.63, "float mAP@k": 0.7}


def test_released_tree_card_reproduces_and_a_wrong_number_is_caught(
        release_data: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    rel, built = release_data
    assert built.returncode == 0, built.stderr
    card = (REPO / "models" / "tiny.neon-trees" / "MODEL_CARD.md").read_text()
    models = tmp_path / "models"
    command = "$ dvis evaluate --task detect -m tiny.neon-trees --data REL/trees/test --format voc\n"
    (models / "tiny.neon-trees").mkdir(parents=True)  # the card's held-out command and its table only
    start, end = card.index("```console\n$ dvis evaluate"), card.index("| SJER")
    (models / "tiny.neon-trees" / "MODEL_CARD.md").write_text(
        "## Metrics\n\n" + card[start:end].replace(card[start:end].split("\n")[2] + "\n", ""))
    assert command in (models / "tiny.neon-trees" / "MODEL_CARD.md").read_text()
    (models / "wrong").mkdir()
    shutil.copy(models / "tiny.neon-trees" / "MODEL_CARD.md", models / "wrong" / "MODEL_CARD.md")
    wrong = models / "wrong" / "MODEL_CARD.md"
    wrong.write_text(wrong.read_text().replace("0.474", "0.574"))
    r = run_script("scripts/check_model_cards.py", "--work", tmp_path / "work", "--models", models,
                   "--rel", rel, "-o", tmp_path / "report.json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ok   tiny.neon-trees:4" in r.stdout and "FAIL wrong:4" in r.stdout
    assert "FAIL AP50: measured 0.474" in r.stdout and "ok   AP50: measured 0.474" in r.stdout
    assert "1 of 2 quoted commands reproduce" in r.stdout


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    inside = run_script("scripts/check_model_cards.py", "--work", REPO / "cards-work")
    assert inside.returncode == 2 and "inside the repository" in inside.stderr and not (REPO / "cards-work").exists()
    unknown = run_script("scripts/check_model_cards.py", "--work", tmp_path, "--model", "no.such-model")
    assert unknown.returncode == 2 and "no.such-model" in unknown.stderr
