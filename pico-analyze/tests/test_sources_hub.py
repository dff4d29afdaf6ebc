"""The Hub source, offline: huggingface_hub's listing and snapshot calls served from local
folders of the same shape, with the Hub's own allow_patterns filter. The code path under test is
the real one (huggingface_hub.list_repo_files / snapshot_download with allow_patterns)."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects

from pico_analyze import analyze_run
from pico_analyze.sources import HubRun, hub, open_source
from pico_analyze.sources.hub import parse_hub_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CFG = {
    "plots": False,
    "progress": False,
    "metrics": [
        {
            "metric": "cka",
            "components": [{"type": "simple", "kind": "activations", "module": "self_attn.v_proj"}],
        },
        {
            "metric": "gini",
            "components": [{"type": "simple", "kind": "weights", "module": "self_attn.o_proj"}],
        },
    ],
}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """repos[repo_id] = local folder; returns (repos, calls)."""
    repos, calls = {}, []

    def files(repo_id):
        root = repos[repo_id]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def list_repo_files(repo_id, *, revision=None, repo_type=None, token=None):
        calls.append(("list", repo_id, revision))
        return files(repo_id)

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, cache_dir=None, **kw):
        calls.append(("download", revision, list(allow_patterns or [])))
        snapshot = tmp_path / "hf-cache" / repo_id.replace("/", "--") / "snapshots" / COMMIT
        for f in filter_repo_objects(files(repo_id), allow_patterns=allow_patterns):
            (snapshot / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repos[repo_id] / f, snapshot / f)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "check_reachable", lambda what: None)  # the fake Hub is "online"
    return repos, calls


def downloaded(calls) -> set[str]:
    return {f for c in calls if c[0] == "download" for f in c[2]}


def test_parse_hub_spec():
    assert parse_hub_spec("hf://pico-lm/pico-decoder-tiny@step-1000") == (
        "pico-lm/pico-decoder-tiny",
        "step-1000",
    )
    assert parse_hub_spec("pico-lm/demo", "main") == ("pico-lm/demo", "main")
    assert parse_hub_spec("not a repo") is None


def test_hub_run_in_our_format_downloads_only_needed_files(fake_hub, pico_run, tmp_path):
    repos, calls = fake_hub
    repos["me/tiny"] = pico_run
    result = analyze_run("hf://me/tiny@main", CFG, tmp_path / "out")
    source_files = downloaded(calls)
    assert ("list", "me/tiny", "main") in calls
    data = {f for f in source_files if f.endswith(".safetensors")}
    assert data == {
        f"checkpoints/step_{s:08d}/capture/eval/{k}.safetensors"
        for s in (0, 10, 20)
        for k in ("activations", "weights")
    }
    revisions = [c[1] for c in calls if c[0] == "download"]
    assert len(revisions) >= 2 and set(revisions[1:]) == {COMMIT}  # pinned after the first
    local = analyze_run(pico_run, CFG, tmp_path / "local")
    assert [(r.step, r.metric, r.layer, r.value) for r in result.rows] == [
        (r.step, r.metric, r.layer, r.value) for r in local.rows
    ]
    assert result.runs == ["tiny@main"]


def test_hub_run_in_the_original_layout(fake_hub, original_run, tmp_path):
    repos, calls = fake_hub
    repos["pico-lm/demo"] = original_run
    source = open_source("pico-lm/demo", revision="demo-1")
    assert isinstance(source, HubRun)
    assert source.steps() == [0, 10, 20] and source.splits(20) == ["eval"]
    assert downloaded(calls) == {"training_config.yaml"}  # nothing else until prepared
    result = analyze_run(source.repo_id, CFG, tmp_path / "out", revision="demo-1")
    assert downloaded(calls) == {"training_config.yaml"} | {
        f"checkpoints/step_{s}/learning_dynamics/val_{k}.pt"
        for s in (0, 10, 20)
        for k in ("activations", "weights")
    }
    assert not result.notes and {r.step for r in result.rows} == {0, 10, 20}


def test_hub_errors_are_reported(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setattr(hub, "check_reachable", lambda what: None)
    from pico_analyze.load import SourceError

    message = "Cannot list Hugging Face repo 'me/x'.*no local directory.*no network"
    with pytest.raises(SourceError, match=message):
        open_source("hf://me/x").steps()


def test_an_unreachable_hub_fails_at_once_in_one_line(monkeypatch, tmp_path):
    """No retries: the Hub is not asked when its host cannot be reached."""
    import socket

    from pico_analyze.load import SourceError

    def no_network(address, timeout=None):
        raise socket.gaierror(-2, "Name or service not known")

    def listed(*args, **kwargs):
        raise AssertionError("huggingface_hub was called (and would retry)")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", listed)
    with pytest.raises(SourceError) as err:
        open_source("hf://me/x").steps()
    message = str(err.value)
    assert "\n" not in message and message.startswith("Cannot reach the Hugging Face Hub")
    assert "Name or service not known" in message and "HF_HUB_OFFLINE=1" in message
    # A bare owner/name may be a mistyped local path (`runs/dmeo` where no runs/ exists yet).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match="and no local run directory 'runs/dmeo' exists"):
        open_source("runs/dmeo").steps()
