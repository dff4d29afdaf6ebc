"""Tiny configurations shared by the tests (imported by them; no tests here).

Every test that trains or builds data uses these settings, so the Shakespeare BPE (vocab 300) is
trained once per session and cached under PICO_CACHE.
"""

import os
import signal
import subprocess

from pico_train.config import RunConfig, load_config

# Data settings of every tiny run.
DATA = ["preset=demo", "data.seq_len=32", "data.tokenizer_vocab_size=300", "data.eval_sequences=4"]

# A model small enough that a step takes milliseconds.
TINY = [
    *DATA,
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.mlp_hidden=64",
    "model.vocab_size=512",
    "model.max_seq_len=32",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.lr=3e-3",
    "training.warmup_steps=2",
    "training.max_steps=12",
    "checkpointing.every=3",
    "checkpointing.steps=[0,1]",
    "checkpointing.keep_states=2",
    "evaluation.batch_size=4",
    "capture.batch_size=4",
    "capture.micro_batch_size=2",
    "logging.progress=false",
]


# The environment of the multi-process CPU tests (gloo): one thread per process, and no GPU even
# on a machine that has one, where torchrun's workers would otherwise each take a CUDA device.
CPU_RANKS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
}


def data_config(*extra: str) -> RunConfig:
    """The demo preset with the tiny data settings (for data and tokenizer tests)."""
    return load_config(overrides=[*DATA, *extra])


def tiny_config(run_dir, *extra: str) -> RunConfig:
    """A tiny model trained for 12 steps into `run_dir`, checkpoints at 0, 1, 3, 6, 9, 12."""
    return load_config(overrides=[*TINY, f"run_dir={run_dir}", *extra])


def run_process_group(cmd, *, env, timeout, cwd=None) -> subprocess.CompletedProcess:
    """Run `cmd` (a torchrun launch, say) in its own process group and capture its output.

    On a time-out, and whatever happens, every process of the group is killed: killing only
    torchrun's agent would leave its workers running (one such orphan sat in a collective for
    half an hour). A time-out raises subprocess.TimeoutExpired like subprocess.run.
    """
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.poll() is None:
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
