"""`handheld report`: bench results (and optional eval results) as a Markdown report with PNG charts.

The report compares programs side by side: speed, memory, size and quality, each as a ratio to the best
unquantized program (fp32, bf16 or fp16), and each decode rate as a share of the memory-bandwidth roofline
(weight bytes read per decoded token over the host's measured bandwidth). Rows from an Android device
(`bench --target adb`) sit beside host rows, labelled with the device, described under the table, and
without a roofline (the bandwidth was measured on the host).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from handheld.core.atomic import atomic_path
from handheld.core.errors import HandheldError



@dataclass(frozen=True)
class Chart:
    metric: str  # key in a row's stats, or a derived field
    title: str
    unit: str
    scale: float = 1.0  # divides the raw value


CHARTS = (
    Chart("decode_tok_s", "Decode rate", "tok/s"),
    Chart("prefill_tok_s", "Prefill rate", "tok/s"),
    Chart("ttft_s", "Time to first token", "s"),
    Chart("peak_rss_bytes", "Peak RSS", "MiB", 2**20),
    Chart("program_rss_bytes", "Peak RSS added by loading and running the program", "MiB", 2**20),
    Chart("file_bytes", "File size", "MB", 1e6),
    Chart("perplexity", "Perplexity", ""),
)


def load_evals(paths: list[Path]) -> list[dict]:
    evals = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise HandheldError(f"cannot read eval results {path}: {e}") from None
        if "perplexity" not in data:
            raise HandheldError(f"{path} is not `handheld eval --json` output (no perplexity)")
        evals.append(data)
    return evals


def attach_perplexity(rows: list[dict], evals: list[dict]) -> None:
    """An eval result belongs to the row it names, else to the rows of its scheme."""
    for row in rows:
        named = [e for e in evals if e.get("name") == row["name"]]
        same_scheme = [e for e in evals if "name" not in e and e.get("scheme") == row["scheme"]]
        match = (named or same_scheme or [None])[0]
        if match is not None:
            row["perplexity"] = match["perplexity"]


def is_unquantized(scheme: str) -> bool:
    """A scheme of the table that keeps float weights (fp32, bf16, fp16); recipes' labels (spinquant, ...) are 4-bit."""
    from handheld.quant.schemes import SCHEMES

    return scheme in SCHEMES and not SCHEMES[scheme].quantized


def baseline_row(rows: list[dict], name: str | None = None) -> dict | None:
    """The named row, or the fastest-decoding unquantized one (None if there is none)."""
    if name is not None:
        for row in rows:
            if row["name"] == name:
                return row
        raise HandheldError(f"no program named {name!r} in the results; programs: {', '.join(r['name'] for r in rows)}")
    unquantized = [r for r in rows if is_unquantized(r["scheme"])]
    return max(unquantized, key=lambda r: r["stats"]["decode_tok_s"]["median"], default=None)


def value(row: dict, metric: str) -> float | None:
    if metric in row.get("stats", {}):
        return row["stats"][metric]["median"]
    return row.get(metric)


def where(row: dict) -> str:
    """Where a row ran: the device's model for a device row, else its target."""
    device = row.get("device")
    return (device.get("model") or device["serial"]) if device else row["target"]


def label(row: dict, rows: list[dict]) -> str:
    """A row's name, and where it ran when the rows come from more than one place (same program, two places)."""
    return row["name"] if len({where(r) for r in rows}) == 1 else f"{row['name']} @ {where(row)}"


def roofline_tok_s(row: dict, bandwidth_gbs: float | None) -> float | None:
    if not bandwidth_gbs or not row.get("bytes_per_token") or row.get("device"):
        return None
    return bandwidth_gbs * 1e9 / row["bytes_per_token"]


def _ratio(row: dict, base: dict | None, metric: str) -> str:
    mine, theirs = value(row, metric), value(base, metric) if base else None
    if mine is None or not theirs:
        return "–"
    return f"{mine / theirs:.2f}x"


def _spread(row: dict, metric: str, scale: float = 1.0, digits: int = 1) -> str:
    s = row["stats"][metric]
    return f"{s['median'] / scale:.{digits}f} ({s['min'] / scale:.{digits}f}–{s['max'] / scale:.{digits}f})"


def markdown_table(rows: list[dict], base: dict | None, bandwidth_gbs: float | None) -> str:
    header = ("program", "scheme", "backend", "decode tok/s", "prefill tok/s", "TTFT s", "peak RSS MiB",
              "program RSS MiB", "file MB", "load s", "decode cv", "perplexity", "decode vs base", "prefill vs base",
              "RSS vs base", "size vs base", "GB/token", "roofline tok/s", "share of roofline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        roof = roofline_tok_s(row, bandwidth_gbs)
        ppl = row.get("perplexity")
        cells = (
            label(row, rows) + (" (base)" if row is base else ""), row["scheme"], row["backend"],
            _spread(row, "decode_tok_s", digits=2), _spread(row, "prefill_tok_s"), _spread(row, "ttft_s", digits=3),
            f"{value(row, 'peak_rss_bytes') / 2**20:.0f}", f"{value(row, 'program_rss_bytes') / 2**20:.0f}",
            f"{row['file_bytes'] / 1e6:.1f}",
            f"{value(row, 'load_s'):.2f}", f"{row['stats']['decode_tok_s']['cv'] * 100:.1f}%",
            f"{ppl:.3f}" if ppl is not None else "–",
            _ratio(row, base, "decode_tok_s"), _ratio(row, base, "prefill_tok_s"),
            _ratio(row, base, "peak_rss_bytes"), _ratio(row, base, "file_bytes"),
            f"{row['bytes_per_token'] / 1e9:.3f}" if row.get("bytes_per_token") else "–",
            f"{roof:.1f}" if roof else "–",
            f"{100 * value(row, 'decode_tok_s') / roof:.0f}%" if roof else "–",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_chart(rows: list[dict], chart: Chart, path: Path) -> bool:
    """One horizontal bar per program, whiskers from min to max; False when no row has the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if value(r, chart.metric) is not None]
    if not shown:
        return False
    medians = [value(r, chart.metric) / chart.scale for r in shown]
    errors = None
    if chart.metric in shown[0].get("stats", {}):
        errors = [[m - r["stats"][chart.metric]["min"] / chart.scale for m, r in zip(medians, shown)],
                  [r["stats"][chart.metric]["max"] / chart.scale - m for m, r in zip(medians, shown)]]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(shown) + 1.2))
    ax.barh([label(r, rows) for r in shown], medians, xerr=errors, color="#4878a8", capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"{chart.title} ({chart.unit})" if chart.unit else chart.title)
    ax.set_title(chart.title + (" (median; whiskers: min–max)" if errors else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def host_lines(results: dict) -> list[str]:
    host = results.get("host") or results["rows"][0]["host"]
    versions = ", ".join(f"{k} {v}" for k, v in host["versions"].items() if v)
    first = results["rows"][0]
    lines = [
        f"- Host: {host['cpu']}, {host['cores']} cores, {host['machine']}, {host['os']}; flags: {' '.join(host['cpu_flags']) or 'none listed'}",
        f"- Software: {versions}",
        f"- Runs: prompt {first['prompt_len']} tokens, {first['gen_len']} generated, {first['threads']} threads, "
        f"{first['runs']} runs after {first['warmup']} warm-up, each in a fresh process; runner {first['runner']}, "
        f"target {', '.join(dict.fromkeys(row['target'] for row in results['rows']))}",
    ]
    devices = {row["device"]["serial"]: row["device"] for row in results["rows"] if row.get("device")}
    lines += [device_line(device) for device in devices.values()]
    if any(row.get("emulated") for row in results["rows"]):
        lines.append("- **Emulated**: these figures come from qemu user-mode emulation, not Arm hardware; compare them "
                     "only with each other")
    worked = [row for row in results["rows"] if row.get("work")]
    if worked:
        lines.append("- Deterministic work per run: " + "; ".join(
            f"{row['name']} {row['work']['value']:,} {row['work']['metric']}" for row in worked))
    if results.get("memory_bandwidth_gbs"):
        lines.append(f"- Memory bandwidth (STREAM-style triad, {results.get('bandwidth_threads', '?')} threads): "
                     f"{results['memory_bandwidth_gbs']:.1f} GB/s")
    return lines


def device_line(device: dict) -> str:
    """One Android device as a report line: what it is, what it runs, how its big cores were set."""
    name = " ".join(filter(None, (device.get("manufacturer"), device.get("model")))) or device["serial"]
    soc = device.get("soc") or device.get("platform") or "SoC unknown"
    return (f"- Device: {name} ({soc}), Android {device.get('android') or '?'} (SDK {device.get('sdk') or '?'}), "
            f"{device.get('abi') or '?'}, kernel {device.get('kernel') or '?'}; flags: "
            f"{' '.join(device.get('cpu_flags') or []) or 'none listed'}; big cores {device.get('big_cores')}, "
            f"governor {', '.join(device.get('governor') or ['?'])}; not emulated")


def summary_markdown(rows: list[dict], out_dir: Path) -> str:
    """What a reader takes in at a glance: one short table against the float row, and quality against size."""
    float_row = next((r for r in rows if r["scheme"] == "fp32"), rows[0])
    lines = ["## At a glance", "",
             f"Each value, then its ratio to {float_row['scheme']}. Perplexity change: relative to {float_row['scheme']} "
             "(lower perplexity is better).", "",
             "| scheme | file MB | decode tok/s | TTFT s | peak RSS MiB | perplexity | change vs float |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def both(key: str, fmt: str, scale: float = 1.0) -> str:
            return f"{format(r[key] / scale, fmt)} ({r[key] / float_row[key]:.2f}x)"
        change = 100 * (r["perplexity"] / float_row["perplexity"] - 1)
        lines.append(f"| {r['scheme']} | {both('file_bytes', '.1f', 1e6)} | {both('decode_tok_s', '.1f')} | "
                     f"{both('ttft_s', '.3f')} | {both('peak_rss_bytes', '.0f', 2**20)} | {r['perplexity']:.3f} | "
                     f"{change:+.1f}% |")
    draw_tradeoff(rows, out_dir / "quality_vs_size.png")
    return "\n".join(lines + ["", "![perplexity against file size](quality_vs_size.png)"])


def draw_tradeoff(rows: list[dict], path: Path) -> None:
    """Perplexity against file size, one labelled point per scheme: the demo's one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["file_bytes"] / 1e6, r["perplexity"], color="#4878a8")
        ax.annotate(r["scheme"], (r["file_bytes"] / 1e6, r["perplexity"]), textcoords="offset points", xytext=(5, 4))
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Quality against size")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def answers_markdown(rows: list[dict]) -> str:
    """Each program's greedy answer to the same questions, side by side."""
    questions = list(rows[0]["answers"])
    lines = ["## Answers, side by side", "", "Greedy decoding through each `.pte`, same prompt for every scheme.", ""]
    for question in questions:
        lines += [f"**{question}**", "", "| scheme | answer |", "|---|---|"]
        lines += [f"| {r['scheme']} | {_cell(r['answers'][question])} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ") or "(nothing)"


def written_files(out_dir: Path) -> list[Path]:
    """Everything `write_report` may write: never allowed to be one of its inputs."""
    return [out_dir / "report.md", out_dir / "results.json", out_dir / "quality_vs_size.png",
            *[out_dir / f"{c.metric}.png" for c in CHARTS]]


def write_report(results: dict, out_dir: Path, *, evals: list[dict] = (), base_name: str | None = None,
                 notes: list[str] = (), title: str = "handheld benchmark report", sections: list[str] = (),
                 lead: list[str] = ()) -> Path:
    """DIR/report.md (`lead`, then the full table, `sections` and charts), the charts as DIR/*.png, the rows as
    DIR/results.json."""
    rows = results["rows"]
    if not rows:
        raise HandheldError("the results hold no programs")
    attach_perplexity(rows, list(evals))
    base = baseline_row(rows, base_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = [c for c in CHARTS if draw_chart(rows, c, out_dir / f"{c.metric}.png")]
    parts = [f"# {title}", "", *[section + "\n" for section in lead]]
    parts += ["## All figures" if lead else "", "", *host_lines(results), *[f"- {n}" for n in notes], ""]
    parts.append(f"Ratios are against **{base['name']}**, the fastest unquantized program." if base and base_name is None
                 else f"Ratios are against **{base['name']}**." if base else "No unquantized program: no ratios.")
    parts += ["Cells show the median over runs and, in brackets, min–max. The roofline is the decode rate if every "
              "weight byte a token needs were read once at the measured bandwidth. Program RSS is peak RSS minus the "
              "process's RSS before loading (interpreter and runtime).", "",
              markdown_table(rows, base, results.get("memory_bandwidth_gbs")), ""]
    parts += [*[section + "\n" for section in sections], *[f"![{c.title}]({c.metric}.png)" for c in charts]]
    report = out_dir / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return report
