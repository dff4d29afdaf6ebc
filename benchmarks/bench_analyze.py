"""Time the whole `pico-analyze run` process, and its process tree's peak memory.

    python benchmarks/bench_analyze.py [--shape tiny|small] [--layout original|pico]
        [--workload demo|all] [--rows 128] [--no-figures] [--workers N] [--repeat 3]

Builds a synthetic run (benchmarks/analyze_runs.py; in a temporary folder unless --run-dir is
given) of a pico-decoder shape (tiny: d_model 96, small: d_model 384; 12 heads, 4 KV heads, MLP
4 d), 12 layers, 5 checkpoints, 128 sequences per split, in the original pico-train layout or in
ours; then runs ``python -m pico_analyze run RUN --config CFG`` (what the ``pico-analyze``
command runs) as a child process and prints its wall time and the peak of the summed resident
memory of the child and every process it starts (polled from /proc every 10 ms: each task's
children and statm files, or psutil where the kernel lacks them), and of the largest single
process (getrusage of the children).

Workloads:

* ``demo``: the original pico-analyze's demo metric set, on every layer: CKA and PWCCA against
  the last checkpoint (eval activations), and condition number, Frobenius norm, Gini, Hoyer and
  proportional effective rank (PER), each on the plain modules (v_proj, o_proj, down_proj) and the
  OV circuits per head and concatenated, of activations (eval), weights and gradients (eval).
* ``all``: every registered metric on every component it can measure, QK circuits included.

The child inherits no OMP_NUM_THREADS / MKL_NUM_THREADS (unless --threads is given), so the
default thread and worker policy of pico-analyze is what is measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from analyze_runs import BUILDERS

from pico_analyze.metrics import get_metric, list_metrics

MODULES = ("self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
DEMO_SINGLE = ("condition_number", "frobenius_norm", "gini", "hoyer", "proportional_effective_rank")
KINDS = ("activations", "weights", "gradients")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _components(kind: str, qk: bool = False) -> list[dict]:
    out = [{"type": "simple", "kind": kind, "module": m} for m in MODULES]
    out.append({"type": "ov_circuit", "kind": kind, "heads": "both"})
    if qk and kind == "weights":
        out.append({"type": "qk_circuit", "kind": kind, "heads": "both"})
    return out


def demo_config() -> dict:
    metrics = [
        {"metric": m, "components": _components("activations"), "target": "last"}
        for m in ("cka", "pwcca")
    ]
    metrics += [
        {"metric": m, "components": [c for k in KINDS for c in _components(k)]} for m in DEMO_SINGLE
    ]
    return {"splits": ["eval"], "metrics": metrics}


def all_config() -> dict:
    metrics = []
    for name in list_metrics():
        spec = get_metric(name)
        entry = {
            "metric": name,
            "components": [c for k in spec.kinds for c in _components(k, qk=True)],
        }
        if spec.comparative:
            entry["target"] = "last" if spec.kinds == ("activations",) else "previous"
        metrics.append(entry)
    return {"splits": ["eval"], "metrics": metrics}


PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss_proc(pid: int) -> int:
    """Summed resident memory of `pid` and its descendants, from /proc (Linux: each task's
    ``children`` file and ``statm``): ~0.02 ms a poll, where psutil's ``children()`` reads every
    process of the machine (~0.45 ms, 4% of a core when polled every 10 ms)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass  # the process ended meanwhile
    return total


def _tree_rss_psutil(pid: int) -> int:
    total = 0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, float, int]:
    """(wall seconds, CPU seconds of the tree, peak summed RSS of the tree in MB, peak
    single-process RSS in MB, return code)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    own = os.getpid()
    fast = os.path.exists(f"/proc/{own}/task/{own}/children")
    tree_rss = _tree_rss_proc if fast else _tree_rss_psutil
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    output = proc.stdout.read().decode()
    if proc.returncode:
        print(output, file=sys.stderr)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and its waited-for workers
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    return wall, cpu, peak / 2**20, max(usage.ru_maxrss, before) / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "small", "medium"), default="tiny")
    parser.add_argument("--layout", choices=tuple(BUILDERS), default="original")
    parser.add_argument("--workload", choices=("demo", "all"), default="demo")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rows", type=int, default=128, help="captured sequences per split")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="default: pico-analyze's")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the child")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the synthetic run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.run_dir or Path(tmp) / f"{args.shape}-{args.layout}"
        t0 = time.perf_counter()
        if not root.is_dir():
            BUILDERS[args.layout](root, args.shape, args.checkpoints, args.rows, args.layers)
        built = time.perf_counter() - t0
        cfg = demo_config() if args.workload == "demo" else all_config()
        cfg["plots"] = not args.no_figures
        cfg_path = Path(tmp) / "analysis.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        out = Path(tmp) / "analysis"
        cmd = [sys.executable, "-m", "pico_analyze", "run", str(root), "--config"]
        cmd += [str(cfg_path), "--out", str(out), "--no-progress"]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        env = {
            k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
        }
        if args.threads is not None:
            env["OMP_NUM_THREADS"] = str(args.threads)
        runs = [measure(cmd, env) for _ in range(args.repeat)]
        if any(rc not in (0, 1) for *_, rc in runs):
            raise SystemExit("pico-analyze failed (output above)")
        import csv

        with open(out / "results.csv") as f:
            rows = list(csv.DictReader(f))
        noted = sum(1 for r in rows if r["note"])
        walls = [w for w, *_ in runs]
        cpus = [c for _, c, *_ in runs]
        print(
            f"run: {args.shape} (d_model {args_shape_d(args.shape)}), {args.layers} layers, "
            f"{args.checkpoints} checkpoints, {args.rows} sequences per split, {args.layout} "
            f"layout (built in {built:.1f} s); load average {os.getloadavg()[0]:.2f}, "
            f"{os.cpu_count()} cores"
        )
        print(
            f"workload {args.workload}: {len(rows)} values ({noted} with a note), figures "
            f"{'off' if args.no_figures else 'on'}, workers {args.workers or 'default'}, "
            f"threads {args.threads or 'default'}"
        )
        print(
            f"whole process: {min(walls):.2f} s (min of {len(walls)}; median "
            f"{statistics.median(walls):.2f} s), CPU {min(cpus):.2f} s (user + system, all "
            f"processes); peak memory of the process tree {max(r[2] for r in runs):.0f} MB "
            f"(largest single process {max(r[3] for r in runs):.0f} MB)"
        )


def args_shape_d(shape: str) -> int:
    from analyze_runs import SHAPES

    return SHAPES[shape]


if __name__ == "__main__":
    main()
