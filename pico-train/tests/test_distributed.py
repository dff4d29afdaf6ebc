"""torchrun with 2 CPU processes (gloo) equals one process: losses and captured files."""

import pytest
import torch

from pico_format import CaptureReader, RunPaths, list_checkpoints
from pico_train.distributed import launch_command
from pico_train.monitor import read_log

from tiny_runs import CPU_RANKS_ENV, TINY, run_process_group

SETTINGS = [
    *TINY,
    "training.max_steps=4",
    "checkpointing.every=2",
    "checkpointing.steps=[]",
    "training.micro_batch_size=1",  # 2 micro-batches per rank: DDP's no_sync path
    "capture.batch_size=3",  # 3 rows over 2 ranks: uneven shares on purpose
]


def _train(run_dir, nproc):
    args = [a for o in [*SETTINGS, f"run_dir={run_dir}"] for a in ("--set", o)]
    cmd = launch_command(nproc, ["train", *args])
    proc = run_process_group(cmd, env=CPU_RANKS_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_two_gloo_ranks_match_one_process(tmp_path):
    _train(tmp_path / "one", 1)
    _train(tmp_path / "two", 2)
    one, two = RunPaths(tmp_path / "one"), RunPaths(tmp_path / "two")
    loss = lambda run: [r["loss"] for r in read_log(run.log) if "loss" in r]
    assert len(loss(one)) == 4
    torch.testing.assert_close(
        torch.tensor(loss(two)), torch.tensor(loss(one)), rtol=1e-5, atol=1e-6
    )
    assert list_checkpoints(one) == list_checkpoints(two) == [2, 4]
    for split in ("train", "eval"):
        a, b = CaptureReader(one.checkpoint(4), split), CaptureReader(two.checkpoint(4), split)
        assert a.manifest.token_ids == b.manifest.token_ids  # same rows, same order
        assert a.manifest.modules == b.manifest.modules
        for kind in ("activations", "weights", "gradients"):
            for module in a.modules(kind):
                torch.testing.assert_close(
                    b.get(kind, module), a.get(kind, module), rtol=1e-4, atol=1e-6
                )
