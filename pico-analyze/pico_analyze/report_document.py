"""The analysis report: ``report.md`` and a self-contained ``report.html``.

Reads a finished :class:`~pico_analyze.analyze.AnalysisResult` (rows, figures, layer-similarity
pairs, warnings, the resolved config) and the runs' sources (their shape, and for pico runs the
training config and identity through ``pico_format``); writes two files into the analysis
folder with the same sections:

1. What was analysed: runs (path, model shape, training setup, data fingerprint), checkpoints,
   splits, metrics.
2. Summary table: per run, metric and component, the mean over layers (and heads) at the first
   and the last analysed checkpoint, and the change.
3. Layer x layer similarity (when computed): CKA of matching depth fractions with its permutation
   p-value.
4. Figures: ``report.md`` links the PNG files; ``report.html`` embeds them as ``data:`` URIs
   (SVG when no PNG was written), so the one file can be mailed or archived.
5. Notes: what could not be measured and why (every kind of note in full, with counts), and
   run-level warnings (e.g. runs trained on different data).
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pico_analyze import figure_style as fs
from pico_format import RunFormatError, RunPaths, read_run_info

if TYPE_CHECKING:
    from pico_analyze.result import AnalysisResult

MD_NAME, HTML_NAME = "report.md", "report.html"
MIME = {".png": "image/png", ".svg": "image/svg+xml"}


@dataclass
class _Doc:
    """The report as data; rendered to Markdown and to HTML."""

    title: str
    sections: list[tuple[str, list]] = field(default_factory=list)  # (heading, blocks)

    def add(self, heading: str, *blocks) -> None:
        self.sections.append((heading, [b for b in blocks if b]))


# Blocks: ("p", text) | ("ul", [text]) | ("table", header, rows) | ("img", path, caption)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "n/a"
    return str(x)


def _training(source) -> list[str]:
    root = getattr(source, "root", None)
    if root is None:
        return []
    run, out = RunPaths(root), []
    try:
        if run.info.is_file():
            info = read_run_info(run)
            out.append(f"data fingerprint {info.data_fingerprint}, code {info.code_version}")
        c = yaml.safe_load(run.config.read_text()) if run.config.is_file() else None
    except (RunFormatError, yaml.YAMLError, OSError):
        return out
    if isinstance(c, dict):
        t, d = c.get("training", {}), c.get("data", {})
        out.append(
            f"preset {c.get('preset') or '(custom)'}; {t.get('max_steps')} steps x "
            f"{t.get('global_batch_size')} sequences x {d.get('seq_len') or '?'} tokens; "
            f"lr {t.get('lr')} ({t.get('schedule')}); "
            f"data {d.get('dataset') or 'Shakespeare (embedded)'}"
        )
    return out


def _what(result: AnalysisResult, sources) -> list:
    items = []
    for s in sources:
        sh = s.shape()
        steps = result.steps.get(s.name, [])
        span = f"{len(steps)} checkpoints, steps {steps[0]}..{steps[-1]}" if steps else "none"
        where = getattr(s, "root", None) or getattr(s, "repo_id", "")
        line = (
            f"**{s.name}** ({where}): d_model {sh.d_model}, {sh.n_layers} layers, "
            f"{sh.n_heads} heads ({sh.n_kv_heads} kv); {span}"
        )
        items.append("; ".join([line, *_training(s)]))
    cfg = result.config
    labels = sorted({r.metric for r in result.rows})
    return [
        ("ul", items),
        (
            "p",
            f"Splits {', '.join(cfg.get('splits') or [])}; layers "
            f"{cfg.get('layers') or 'all'}; comparative metrics against "
            f"{cfg.get('target_step')}. {len(result.rows)} values in {result.seconds:.1f} s. "
            f"Metrics: {', '.join(labels)}.",
        ),
    ]


def _first_last(result: AnalysisResult) -> dict[tuple, dict[str, tuple]]:
    """(metric, component) -> run -> (first step, mean value, last step, mean value); loss and
    benchmark rows first, then the metrics in table order."""
    acc: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in result.rows:
        if math.isfinite(r.value):
            key = (
                r.kind not in ("loss", "benchmark"),
                f"{fs.metric_name(r)} {fs.reference_text([r])}".strip(),
                fs.panel_title(r),
            )
            acc[key][r.run][r.step].append(r.value)
    out = {}
    for key in sorted(acc, key=lambda k: k[0]):  # stable: table order within each block
        out[key[1:]] = {}
        for run, by_step in acc[key].items():
            steps = sorted(by_step)
            mean = [sum(by_step[s]) / len(by_step[s]) for s in (steps[0], steps[-1])]
            out[key[1:]][run] = (steps[0], mean[0], steps[-1], mean[1])
    return out


def _summary(result: AnalysisResult) -> tuple[list[str], list[list]]:
    """(header, rows): one run: first/last step and value and the change; several runs: a
    column per run holding 'first -> last' (each run's own first and last analysed step)."""
    table = _first_last(result)
    if len(result.runs) == 1:
        header = ["metric", "component", "first step", "value", "last step", "value", "change"]
        rows = [
            [name, where, a, _fmt(x), b, _fmt(y), f"{y - x:+.4g}"]
            for (name, where), per_run in table.items()
            for a, x, b, y in per_run.values()
        ]
        return header, rows
    header = ["metric", "component", *result.runs]
    rows = []
    for (name, where), per_run in table.items():
        cells = []
        for run in result.runs:
            v = per_run.get(run)
            cells.append(f"{_fmt(v[1])} -> {_fmt(v[3])}" if v else "")
        rows.append([name, where, *cells])
    return header, rows


def _layers(result: AnalysisResult) -> list:
    """Cross-run (else within-run) matrices summarised per module: mean CKA at matching depth."""
    full = [p for p in result.pairs if math.isfinite(p.cka)]
    if not full:
        return []
    rows = []
    groups: dict[tuple, list] = defaultdict(list)
    for p in full:
        groups[(p.run_a, p.run_b, p.module, p.step)].append(p)
    for (a, b, module, step), ps in sorted(groups.items(), key=lambda kv: kv[0][:3] + (kv[0][3],)):
        n_a = max(p.layer_a for p in ps) + 1
        n_b = max(p.layer_b for p in ps) + 1
        if a != b and all(p.layer_a == p.layer_b for p in ps) and n_b > 1:
            continue  # same-index null-band pairs at intermediate steps
        # Within a run: each layer with the next. Across runs: layer i of a with the layer of b
        # at the same relative depth, round(i (n_b - 1) / (n_a - 1)).
        if a == b:
            match = [p for p in ps if p.layer_b == p.layer_a + 1]
        else:
            match = [p for p in ps if p.layer_b == round(p.layer_a * (n_b - 1) / max(1, n_a - 1))]
        if not match:
            continue
        mean = sum(p.cka for p in match) / len(match)
        pvals = [p.p_value for p in match if math.isfinite(p.p_value)]
        rows.append(
            [a, b, module, step, len(match), _fmt(mean), _fmt(max(pvals)) if pvals else "n/a"]
        )
    if not rows:
        return []
    return [
        (
            "p",
            "Mean CKA of layers at matching relative depth (within a run: each layer with the "
            "next; across runs: layer i with layer i x (depth_b - 1)/(depth_a - 1)), and the "
            "largest permutation p-value among them (small: not chance).",
        ),
        ("table", ["run a", "run b", "module", "step", "pairs", "mean CKA", "max p"], rows),
    ]


def _figures(result: AnalysisResult) -> list:
    by_stem: dict[str, Path] = {}
    for p in result.plots:
        if p.suffix in MIME and (p.stem not in by_stem or p.suffix == ".png"):
            by_stem[p.stem] = p
    blocks = [("img", p, p.stem.replace("_", " ")) for p in by_stem.values()]
    others = sorted({p.suffix for p in result.plots} - set(MIME))
    if others:
        blocks.append(("p", f"Also written as {', '.join(others)} in plots/."))
    return blocks


def _notes(result: AnalysisResult) -> list:
    from pico_analyze.report import note_groups

    items = [f"{w}" for w in result.warnings]
    items += [f"{m} ({c} value{'s' if c > 1 else ''})" for m, c in note_groups(result.rows)]
    return [("ul", items)] if items else [("p", "Every value was measured.")]


def build(result: AnalysisResult, sources) -> _Doc:
    runs = result.runs
    title = (
        f"Analysis of run {runs[0]}" if len(runs) == 1 else f"Comparison of runs {', '.join(runs)}"
    )
    doc = _Doc(title)
    doc.add("What was analysed", *_what(result, sources))
    header, rows = _summary(result)
    spans = "; ".join(f"{run}: steps {st[0]}..{st[-1]}" for run, st in result.steps.items() if st)
    doc.add(
        "Summary: first -> last checkpoint (mean over layers and heads)",
        ("p", f"Loss and benchmark scores first, then the metrics. {spans}."),
        ("table", header, rows),
    )
    layers = _layers(result)
    if layers:
        doc.add("Layer x layer similarity", *layers)
    doc.add("Figures", *_figures(result))
    doc.add("Notes", *_notes(result))
    return doc


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _md_cell(x) -> str:
    return _fmt(x).replace("|", "\\|")


def to_markdown(doc: _Doc, base: Path) -> str:
    out = [f"# {doc.title}", ""]
    for heading, blocks in doc.sections:
        out += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "---|" * len(b[1]))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
                out.append("")
            elif b[0] == "img":
                rel = b[1].relative_to(base).as_posix()
                out += [f"![{b[2]}]({rel})", ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid
#ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:
100%;height:auto;border:1px solid #eee}figcaption{font-size:13px;color:#555}"""


def _inline_md(text: str) -> str:
    """Escape, then render the one Markdown mark the report uses (**bold**)."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(doc: _Doc) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for heading, blocks in doc.sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for b in blocks:
            if b[0] == "p":
                out.append(f"<p>{_inline_md(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
                    for row in b[2]
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(b[1].read_bytes()).decode()
                uri = f"data:{MIME[b[1].suffix]};base64,{data}"
                cap = html.escape(b[2])
                out.append(
                    f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
                )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(result: AnalysisResult, sources) -> list[Path]:
    """Write report.md and report.html into the analysis folder; return their paths."""
    doc = build(result, sources)
    md, page = result.out_dir / MD_NAME, result.out_dir / HTML_NAME
    md.write_text(to_markdown(doc, result.out_dir))
    page.write_text(to_html(doc))
    return [md, page]
