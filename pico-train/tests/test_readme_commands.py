"""The README's commands work as written: every `pico-train train/config/info` line resolves
its config offline without an error, and the table column list matches the table."""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from pico_train.cli import main
from pico_train.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _commands(readme: Path, program: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith(program + " ")]


def _config_args(args: list[str]) -> tuple[str | None, list[str], str | None]:
    path, overrides, preset = None, [], None
    for flag, value in zip(args, args[1:]):
        if flag == "--config":
            path = str(ROOT / value)
        elif flag == "--set":
            overrides.append(value)
        elif flag == "--preset":
            preset = value
    return path, overrides, preset


def test_readme_training_commands_resolve_their_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = _commands(ROOT / "README.md", "pico-train")
    trains = [a for a in commands if a[0] == "train"]
    assert trains, "the README shows a training command"
    for args in trains:
        path, overrides, preset = _config_args(args[1:])
        load_config(path, overrides, preset=preset)  # raises on any refused setting
    for args in [a for a in commands if a[0] in ("config", "info") and "runs/" not in " ".join(a)]:
        result = CliRunner().invoke(main, args)
        expected = 2 if any("trainng" in a for a in args) else 0
        assert result.exit_code == expected, (args, result.output)


def test_readme_table_columns_match_the_table():
    from pico_analyze.table import COLUMNS

    for readme in (ROOT / "README.md", ROOT / "pico-analyze" / "README.md"):
        text = " ".join(readme.read_text().split())
        match = re.search(r"(run, step, split, [a-z_, ]+)", text.replace("`", ""))
        assert match, readme
        listed = [c.strip() for c in match.group(1).split(",") if c.strip()]
        assert listed == COLUMNS, readme
