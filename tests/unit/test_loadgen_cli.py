"""The command's options: rates and durations parse, unbounded or remote runs are refused
before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loadgen.cli import loadgen, parse_rate, parse_seconds


def invoke(args: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(loadgen)
    result = CliRunner().invoke(app, args, terminal_width=200)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("text", "per_second"), [("200", 200.0), ("200/s", 200.0), ("600/m", 10.0), ("0.5", 0.5)]
)
def test_rates_parse(text: str, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["fast", "0", "-3/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_rate(text)


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("2m", 120.0)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


def test_a_run_without_bound_is_refused(tmp_path: Path) -> None:
    code, output = invoke(["--rate", "10", "--out", str(tmp_path)])
    assert code == 2
    assert "give --duration or --count" in output


def test_rate_and_max_exclude_each_other(tmp_path: Path) -> None:
    code, output = invoke(["--rate", "10", "--max", "--count", "5", "--out", str(tmp_path)])
    assert code == 2
    assert "exactly one of --rate N or --max" in output


def test_a_broken_profile_is_named(tmp_path: Path) -> None:
    profile = tmp_path / "broken.yaml"
    profile.write_text("outcomes: {provider_accepts: nope}\n")
    code, output = invoke(["--rate", "1", "--count", "1", "--profile", str(profile)])
    assert code == 2
    # rich's error panel folds a path longer than the panel anywhere: compare without spaces.
    assert f"{profile}:outcomes.provider_accepts:" in output.replace(" ", "")


def test_a_remote_api_is_refused_before_anything_connects(tmp_path: Path) -> None:
    code, output = invoke(
        ["--via", "rest", "--rate", "1", "--count", "1", "--api-url", "http://192.0.2.1:8080",
         "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert code == 2
    assert "refusing API http://192.0.2.1:8080" in output
    assert not list(tmp_path.iterdir())
