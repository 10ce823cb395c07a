"""Mistakes the CLI can see before sending anything: a line that says what to change, and exit 2
(found by an attack: a traceback and exit 1, the code of a failed job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


@pytest.fixture(autouse=True)
def nowhere(monkeypatch):
    # Nothing listens here: what these tests check happens before any request.
    monkeypatch.setenv("TRANSFERLAB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TRANSFERLAB_API_KEY", "tl_x_y")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_uploading_a_path_that_is_not_a_file(tmp_path: Path, capsys, kind):
    path = tmp_path / "nope.zip" if kind == "missing" else tmp_path
    assert main(["datasets", "upload", str(path), "--kind", "unlabeled"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err
    assert ("No such file" if kind == "missing" else "Is a directory") in err


def test_an_option_without_a_value(capsys):
    code = main(["jobs", "submit", "--dataset", "d", "--base-model", "timm:test_resnet",
                 "--option", "trade_off"])  # fmt: skip
    assert code == 2
    assert "--option takes KEY=VALUE, got 'trade_off'" in capsys.readouterr().err
