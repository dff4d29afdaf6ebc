"""corpus.py and data.py: markdown cleaning and the one global data order.

Properties: batch k does not depend on the process count, the micro-batch split or the model
size; held-out windows are never trained on; an epoch covers the training pool exactly once;
local files come back as the windows an independent re-implementation computes; errors name
what is wrong. Stream mode runs in a subprocess (a datasets streaming iterator can abort the
interpreter at exit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from pico_train.config import load_config
from pico_train.corpus import clean_markdown, shakespeare_names, shakespeare_texts
from pico_train.data import DataError, build_data
from pico_train.tokenizer import load_tokenizer

from tiny_runs import DATA, data_config

# One xdist worker runs these, so the session's BPE and tokenized corpus are made once.
pytestmark = pytest.mark.xdist_group("data")

WIDTH = 33  # seq_len + 1
cfg = data_config


@pytest.fixture(scope="session")
def docs():
    """60 small documents (Shakespeare speeches) for the local raw-text files."""
    paragraphs = shakespeare_texts()[5].split("\n\n")[10:250]
    return ["\n\n".join(paragraphs[i : i + 4]) for i in range(0, 240, 4)]


def reference_windows(tok, docs: list[str]) -> np.ndarray:
    """Independent packing: tokenize each document, append EOS, concatenate, cut, drop the tail."""
    ids: list[int] = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // WIDTH
    return np.array(ids[: n * WIDTH]).reshape(n, WIDTH)


def epoch_rows(data, n_train: int) -> torch.Tensor:
    return torch.cat([data.train_batch(i, 1) for i in range(n_train)])


def as_set(rows) -> list[tuple[int, ...]]:
    return sorted(tuple(r) for r in np.asarray(rows).tolist())


def write(frame: pd.DataFrame, path, fmt: str):
    """A tiny dataset file (or folder) of the given format; returns its path."""
    if fmt == "parquet":
        frame.to_parquet(path.with_suffix(".parquet"))
        return path.with_suffix(".parquet")
    if fmt == "jsonl":
        frame.to_json(path.with_suffix(".jsonl"), orient="records", lines=True)
        return path.with_suffix(".jsonl")
    if fmt == "json":
        frame.to_json(path.with_suffix(".json"), orient="records")
        return path.with_suffix(".json")
    # arrow: a Dataset.save_to_disk folder (its state.json/dataset_info.json must be ignored)
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# corpus.py
# ----------------------------------------------------------------------------------------------


def test_clean_markdown_keeps_speakers_and_lines():
    md = (
        "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n"
        "_FRANCISCO at his post. Enter to him BERNARDO_\n\n"
        "**BERNARDO**  \nWho's there?\n\n"
        "**FRANCISCO**  \nNay, answer me: stand,  \nand unfold yourself.\n\n"
        "_Enter HORATIO and\nMARCELLUS_\n\n\n"
        "**HAMLET**  \n__\\[Aside]_  \nA little more than kin.\n\n*Exit.*\n"
    )
    assert clean_markdown(md) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\n"
        "FRANCISCO at his post. Enter to him BERNARDO\n\n"
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand,\nand unfold yourself.\n\n"
        "Enter HORATIO and\nMARCELLUS\n\n"
        "HAMLET:\n[Aside]\nA little more than kin.\n\nExit.\n"
    )


def test_shakespeare_corpus_is_clean_and_ordered():
    names, texts = shakespeare_names(), shakespeare_texts()
    assert len(texts) == len(names) == 38 and names == sorted(names)
    for text in texts:
        assert "**" not in text and "_" not in text and "\\" not in text
        assert not any(line.startswith("#") or line.endswith(" ") for line in text.splitlines())
    hamlet = texts[names.index("tragedies/hamlet.md")]
    assert hamlet.startswith("Hamlet\n") and "BERNARDO:\nWho's there?\n" in hamlet
    assert "Enter HORATIO and MARCELLUS\n" in hamlet
    assert sum(map(len, texts)) > 4_500_000


# ----------------------------------------------------------------------------------------------
# The global order (map mode, embedded corpus)
# ----------------------------------------------------------------------------------------------


def test_batches_do_not_depend_on_world_size_or_model_size(tok):
    demo = build_data(cfg(), tok)
    tiny = build_data(load_config(overrides=[*DATA, "preset=tiny"]), tok)
    assert tiny.fingerprint == demo.fingerprint
    assert torch.equal(tiny.eval_batch(), demo.eval_batch())
    info = demo.describe()
    assert info["mode"] == "map" and info["n_documents"] == 38
    assert info["n_train_sequences"] + 4 == info["n_tokens"] // WIDTH
    json.dumps(info)
    n_train = info["n_train_sequences"]
    for step in (0, 1, 7, n_train // 8 - 1, n_train // 8 + 3, 10 * n_train):  # several epochs
        batch = demo.train_batch(step, 8)
        assert batch.shape == (8, WIDTH) and batch.dtype == torch.int64
        assert torch.equal(tiny.train_batch(step, 8), batch)
        for world in (2, 4, 8):
            shares = [demo.train_batch(step, 8, rank, world) for rank in range(world)]
            assert torch.equal(torch.cat(shares), batch)
        # One global order: batch `step` of 8 = batches 2*step and 2*step+1 of 4.
        halves = torch.cat([demo.train_batch(2 * step, 4), demo.train_batch(2 * step + 1, 4)])
        assert torch.equal(halves, batch)
    assert torch.equal(demo.train_batch(3, 8), build_data(cfg(), tok).train_batch(3, 8))
    with pytest.raises(DataError, match="multiple of the process count"):
        demo.train_batch(0, 8, 0, 3)


def test_fingerprint_tracks_data_settings_not_model(tok):
    base = build_data(cfg(), tok)
    assert build_data(cfg("model.d_model=64", "model.n_layers=2"), tok).fingerprint == (
        base.fingerprint
    )
    reseeded = build_data(cfg("data.seed=1"), tok)
    assert reseeded.fingerprint != base.fingerprint
    assert not torch.equal(reseeded.eval_batch(), base.eval_batch())
    assert not torch.equal(reseeded.train_batch(0, 8), base.train_batch(0, 8))
    assert build_data(cfg("data.seq_len=16"), tok).fingerprint != base.fingerprint
    assert build_data(cfg("data.eval_sequences=8"), tok).fingerprint != base.fingerprint
    assert len(base.fingerprint) >= 32 and int(base.fingerprint, 16) >= 0


# ----------------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def unique_rows():
    """60 pre-tokenized rows of exactly seq_len+1 ids; row i starts with id 1000 + i."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 1000, size=(60, WIDTH))
    rows[:, 0] = 1000 + np.arange(60)
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "arrow"])
def test_pretokenized_rows_held_out_and_each_trained_once_per_epoch(
    tok, tmp_path, unique_rows, fmt
):
    path = write(pd.DataFrame({"input_ids": list(unique_rows)}), tmp_path / "tokens", fmt)
    data = build_data(cfg(f"data.dataset={path}"), tok)
    assert data.describe()["n_train_sequences"] == 56 and data.describe()["n_documents"] == 60
    by_id = {int(r[0]): r for r in unique_rows}
    held = data.eval_batch()
    assert held.shape == (4, WIDTH)
    eval_ids = {int(r[0]) for r in held}
    for epoch in range(2):
        rows = torch.cat([data.train_batch(epoch * 7 + k, 8) for k in range(7)])
        ids = [int(r[0]) for r in rows]
        assert sorted(ids) == sorted(set(by_id) - eval_ids)  # every training row exactly once
        assert all(np.array_equal(r.numpy(), by_id[int(r[0])]) for r in rows)  # rows unchanged
        if epoch == 0:
            first_order = ids
    assert ids != first_order  # epoch 2 is a fresh permutation
    # A batch that straddles an epoch boundary is the same sequences, however it is split.
    singles = torch.cat([data.train_batch(i, 1) for i in range(50, 60)])
    assert torch.equal(data.train_batch(5, 10), singles)


def test_pretokenized_formats_agree_and_rows_are_packed(tok, tmp_path, unique_rows):
    frame = pd.DataFrame({"input_ids": list(unique_rows)})
    built = [
        build_data(cfg(f"data.dataset={write(frame, tmp_path / fmt, fmt)}"), tok)
        for fmt in ("parquet", "json", "arrow")
    ]
    for other in built[1:]:
        assert torch.equal(other.train_batch(2, 8), built[0].train_batch(2, 8))
        assert torch.equal(other.eval_batch(), built[0].eval_batch())
    # Rows of other lengths are concatenated in order and cut into windows.
    ragged = [list(range(i, i + n)) for i, n in enumerate([5, 40, 17, 33, 60, 9, 70, 12] * 3)]
    path = write(pd.DataFrame({"input_ids": ragged}), tmp_path / "ragged", "parquet")
    data = build_data(cfg(f"data.dataset={path}"), tok)
    flat = np.concatenate(ragged)
    expected = flat[: len(flat) // WIDTH * WIDTH].reshape(-1, WIDTH)
    n_train = data.describe()["n_train_sequences"]
    seen = torch.cat([data.eval_batch(), epoch_rows(data, n_train)])
    assert as_set(seen) == as_set(expected)


def test_pretokenized_ids_beyond_model_vocab(tok, tmp_path, unique_rows):
    rows = unique_rows.copy()
    rows[7, 3] = 5000  # the demo model has 4096 embeddings
    path = write(pd.DataFrame({"input_ids": list(rows)}), tmp_path / "big", "parquet")
    with pytest.raises(DataError, match="5000.*4096"):
        build_data(cfg(f"data.dataset={path}"), tok)
    with pytest.raises(DataError, match="pre-tokenized.*data.tokenizer"):
        load_tokenizer(cfg(f"data.dataset={path}"))


@pytest.mark.parametrize("fmt", ["parquet", "json", "jsonl", "arrow"])
def test_local_raw_text_matches_reference_packing(tok, tmp_path, docs, fmt):
    path = write(pd.DataFrame({"text": docs, "id": range(len(docs))}), tmp_path / "docs", fmt)
    data = build_data(cfg(f"data.dataset={path}"), tok)
    expected = reference_windows(tok, docs)
    info = data.describe()
    assert info["n_documents"] == len(docs) and info["n_train_sequences"] == len(expected) - 4
    seen = torch.cat([data.eval_batch(), epoch_rows(data, info["n_train_sequences"])])
    assert as_set(seen) == as_set(expected)


def test_local_text_with_a_trained_tokenizer(tmp_path, docs):
    path = write(pd.DataFrame({"body": docs}), tmp_path / "docs", "parquet")
    with pytest.raises(DataError, match="'text'.*body"):
        load_tokenizer(cfg(f"data.dataset={path}"))
    config = cfg(f"data.dataset={path}", "data.text_column=body", "data.tokenizer_vocab_size=270")
    data = build_data(config)  # a BPE trained on these documents
    assert len(data.tokenizer) == 270
    assert torch.equal(data.eval_batch(), build_data(config).eval_batch())


def test_missing_or_unusable_datasets_are_named(tok, tmp_path, monkeypatch):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(DataError, match="nope.parquet"):
        build_data(cfg(f"data.dataset={missing}"), tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet, json, jsonl or arrow"):
        build_data(cfg(f"data.dataset={tmp_path / 'empty'}"), tok)
    short = write(pd.DataFrame({"text": ["To be, or not to be."] * 8}), tmp_path / "s", "json")
    with pytest.raises(DataError, match=r"gives \d+ sequences.*data.eval_sequences"):
        build_data(cfg(f"data.dataset={short}"), tok)

    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="pico-lm/no-such-dataset.*local") as err:
        build_data(cfg("data.dataset=pico-lm/no-such-dataset"), tok)
    assert "could not reach" in str(err.value).lower()
    with pytest.raises(DataError, match="pico-lm/no-such-tokenizer.*could not be downloaded"):
        load_tokenizer(cfg("data.tokenizer=pico-lm/no-such-tokenizer"))


def test_empty_and_too_small_datasets_name_the_cause(tok, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl' is empty \(0 bytes\)"):
        build_data(cfg(f"data.dataset={tmp_path / 'empty.jsonl'}"), tok)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    with pytest.raises(DataError, match="zero.parquet' holds no rows"):
        build_data(cfg(f"data.dataset={tmp_path / 'zero.parquet'}"), tok)
    pq.write_table(pa.table({"text": ["To be."]}), tmp_path / "tiny.parquet")
    with pytest.raises(DataError, match=r"too few for even two sequences.*data.seq_len \(below"):
        build_data(cfg(f"data.dataset={tmp_path / 'tiny.parquet'}"), tok)


def test_unreachable_hub_fails_at_once_in_one_line(tmp_path, monkeypatch):
    import time

    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    began = time.perf_counter()
    with pytest.raises(DataError, match="data.dataset 'pico-lm/x' needs the Hugging Face Hub"):
        build_data(cfg("data.dataset=pico-lm/x", "data.tokenizer_vocab_size=300"))
    with pytest.raises(DataError, match="data.tokenizer 'pico-lm/no-such' needs the Hugging"):
        load_tokenizer(cfg("data.tokenizer=pico-lm/no-such"))
    assert time.perf_counter() - began < 30  # not the clients' minute of retries


# ----------------------------------------------------------------------------------------------
# Stream mode (in a subprocess)
# ----------------------------------------------------------------------------------------------

STREAM_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pico_train.config import load_config
    from pico_train.data import DataError, build_data

    out = {}
    for name, path in (("text", sys.argv[1]), ("tokens", sys.argv[2])):
        overrides = json.loads(sys.argv[4])
        overrides += [f"data.dataset={path}", f"data.tokenizer={sys.argv[3]}"]
        config = load_config(overrides=overrides + ["data.streaming=true"])
        fresh = build_data(config)
        res = {
            "fingerprint": fresh.fingerprint,
            "describe": fresh.describe(),
            "eval": fresh.eval_batch().tolist(),
            "batches": [fresh.train_batch(k, 4).tolist() for k in range(5)],
        }
        res["repeat"] = fresh.train_batch(4, 4).tolist()  # the same step twice is allowed
        try:
            fresh.train_batch(1, 4)
            res["backwards"] = ""
        except DataError as err:
            res["backwards"] = str(err)
        resumed = build_data(config)
        res["resumed"] = [resumed.train_batch(k, 4).tolist() for k in (3, 4)]
        rank1 = build_data(config)
        res["rank1"] = [rank1.train_batch(k, 4, rank=1, world_size=2).tolist() for k in range(3)]
        res["map_fingerprint"] = build_data(load_config(overrides=overrides)).fingerprint
        out[name] = res
    print("RESULT" + json.dumps(out))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, where a streaming iterator may abort
    """
)


def test_stream_mode_reads_in_order_and_resumes(tok, tok_dir, tmp_path, docs, unique_rows):
    text = write(pd.DataFrame({"text": docs}), tmp_path / "docs", "jsonl")
    ragged = [r[: 20 + i % 20] for i, r in enumerate(unique_rows.tolist())]
    tokens = write(pd.DataFrame({"input_ids": ragged}), tmp_path / "tokens", "parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            STREAM_SCRIPT,
            str(text),
            str(tokens),
            str(tok_dir),
            json.dumps(DATA),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT") :])

    flat = np.concatenate(ragged)
    expected = {
        "text": reference_windows(tok, docs).tolist(),
        "tokens": flat[: len(flat) // WIDTH * WIDTH].reshape(-1, WIDTH).tolist(),
    }
    for name, res in out.items():
        windows = expected[name]  # the stream's windows, in stream order
        assert res["eval"] == windows[:4]  # held out: the first eval_sequences windows
        for k, batch in enumerate(res["batches"]):
            assert batch == windows[4 + 4 * k : 8 + 4 * k]
        assert res["repeat"] == res["batches"][4]
        assert "forward only" in res["backwards"]
        assert res["resumed"] == res["batches"][3:5]  # first call at step 3 = the 4th batch
        assert res["rank1"] == [b[2:] for b in res["batches"][:3]]
        assert res["describe"]["mode"] == "stream"
        # Same inputs, another process: the same map-mode fingerprint; stream mode differs.
        config = cfg(
            f"data.dataset={text if name == 'text' else tokens}", f"data.tokenizer={tok_dir}"
        )
        assert build_data(config).fingerprint == res["map_fingerprint"] != res["fingerprint"]
