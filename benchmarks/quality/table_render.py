"""The quality table's Markdown and chart, rendered from its results JSON alone (benchmarks/quality/table.py)."""

from __future__ import annotations

from pathlib import Path

KIND_ORDER = ("handheld eager", "handheld .pte", "llama.cpp")


def _rows_of(report: dict, checkpoint: str) -> list[dict]:
    rows = [r for r in report["rows"].values() if r["checkpoint"] == checkpoint]
    return sorted(rows, key=lambda r: (KIND_ORDER.index(r["kind"]), r["bytes_per_token"]))


def checkpoint_table(report: dict, checkpoint: str) -> list[str]:
    rows = _rows_of(report, checkpoint)
    floats = [r for r in rows if r["kind"] == "handheld eager" and r["row"] == "float"]
    texts = list(report["texts"])
    head = "| kind | row | " + " | ".join(f"{t} ppl | vs float | KL | top-1" for t in texts) + " | MB/token | file MB |"
    lines = [head, "|---|---|" + "---:|---:|---:|---:|" * len(texts) + "---:|---:|"]
    for r in rows:
        cells = []
        for text in texts:
            s = r["scores"][text]
            rel = f"{s['perplexity'] / floats[0]['scores'][text]['perplexity'] - 1:+.1%}" if floats else ""
            cells += [f"{s['perplexity']:.3f}", rel, f"{s['mean_kl']:.4f}", f"{s['top1_agreement']:.3f}"]
        lines.append(f"| {r['kind']} | {r['row']} | " + " | ".join(cells)
                     + f" | {r['bytes_per_token'] / 1e6:.2f} | {r['file_bytes'] / 1e6:.1f} ({r['file_kind']}) |")
    return lines


def _machine(host: dict) -> str:
    flags = ", ".join(f for f in host["cpu_flags"] if f.startswith(("avx", "fma", "f16c", "amx")))
    return f"{host['cpu']} ({host['usable_cores']} cores; flags {flags})"


def _same_run(run: dict) -> str:
    """The baselines a partial run measured beside its rows (its own machine), for the differences that matter."""
    measured = [f"{row['row']} ({row['checkpoint']}) " + ", ".join(f"{text} {s['perplexity']:.3f}"
                                                                   for text, s in row["scores"].items())
                for row in run.get("same_run_baselines", {}).values()]
    return f"; beside them, in that run: {'; '.join(measured)}" if measured else ""


def render_markdown(report: dict) -> str:
    host = report["host"]
    peers = next((r for r in report["rows"].values() if r["kind"] == "llama.cpp"), {})
    later = report.get("runs", [])
    commits = sorted({r["commit"] for r in report["rows"].values()} - {run["commit"] for run in later})
    out = [f"Made by `{report['command']}` at commit(s) {', '.join(commits)} on {_machine(host)}."]
    out += [f"Rows added by `{run['command']}` at commit {run['commit']} on {_machine(run['host'])}"
            f"{_same_run(run)}." for run in later]
    out += [f"Texts: {', '.join(f'{k} ({v})' for k, v in report['texts'].items())}; first {report['tokens']} tokens, "
            f"context {report['context']}, stride {report['stride']}; KL and top-1 against the same checkpoint's float "
            f"model; `--calib` reads {report['calib']}.",
            f"llama.cpp: llama-cpp-python {peers.get('llama_cpp_python', '?')}, system_info "
            f"`{peers.get('system_info', '?')}`.",
            ""]
    for checkpoint in sorted({r["checkpoint"] for r in report["rows"].values()}, key=lambda c: c != "shipped"):
        out += [f"### {checkpoint}", ""] + checkpoint_table(report, checkpoint) + [""]
    return "\n".join(out)


def render_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checkpoints = sorted({r["checkpoint"] for r in report["rows"].values()}, key=lambda c: c != "shipped")
    texts = list(report["texts"])
    fig, axes = plt.subplots(len(checkpoints), len(texts), figsize=(6 * len(texts), 4.2 * len(checkpoints)), squeeze=False)
    for i, checkpoint in enumerate(checkpoints):
        rows = [r for r in _rows_of(report, checkpoint) if r["row"] != "float" and r["row"] != "F32"]
        base = next(r for r in _rows_of(report, checkpoint) if r["row"] == "float")
        for j, text in enumerate(texts):
            _chart_panel(axes[i][j], rows, base, text, f"{checkpoint}: {text}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_panel(ax, rows: list[dict], base: dict, text: str, title: str) -> None:
    def increase(r):
        return 100 * (r["scores"][text]["perplexity"] / base["scores"][text]["perplexity"] - 1)

    calibrated = [r for r in rows if r["kind"] == "handheld eager" and r["row"].startswith("8da4w --calib")]
    curve = []  # the calibrated rows, unrotated and rotated: each option's ppl-vs-bytes line
    for rotated, color in ((False, "tab:blue"), (True, "tab:purple")):
        points = sorted((r for r in calibrated if ("--rotation" in r["row"]) == rotated), key=lambda r: r["bytes_per_token"])
        label = "handheld --calib" + (" --rotation quarot" if rotated else "") + " (+ --budget-mb)"
        ax.plot([r["bytes_per_token"] / 1e6 for r in points], [increase(r) for r in points], "o-", color=color, label=label)
        curve += points
    styles = {"handheld eager": ("s", "tab:green"), "handheld .pte": ("x", "black"), "llama.cpp": ("^", "tab:red")}
    for r in rows:
        if r in curve:
            continue
        marker, color = styles[r["kind"]]
        ax.plot(r["bytes_per_token"] / 1e6, increase(r), marker, color=color)
        ax.annotate(f"{r['row']}" + (" (.pte)" if r["kind"] == "handheld .pte" else ""),
                    (r["bytes_per_token"] / 1e6, increase(r)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(title)
    ax.set_xlabel("MB of weights read per decoded token")
    ax.set_ylabel("perplexity increase over float, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def render_all(report: dict, folder: Path, docs: Path | None = None) -> None:
    """table.md, summary.md and the chart beside the JSON; with `docs` (the repository root), the same tables
    into README.md's quality-summary and BENCHMARKS.md's quality-table blocks."""
    table, summary = render_markdown(report), render_summary(report)
    (folder / "table.md").write_text(table)
    (folder / "summary.md").write_text(summary)
    render_chart(report, folder / "ppl_vs_bytes.png")
    if docs is not None:
        replace_block(docs / "BENCHMARKS.md", "quality-table", table)
        replace_block(docs / "README.md", "quality-summary", summary)


def replace_block(doc: Path, name: str, text: str) -> None:
    """Replace what stands between `<!-- NAME: begin ... -->` and `<!-- NAME: end -->` in `doc`."""
    source = doc.read_text()
    begin = source.index(f"<!-- {name}: begin")
    start = source.index("-->\n", begin) + len("-->\n")
    end = source.index(f"<!-- {name}: end -->", start)
    doc.write_text(source[:start] + text + source[end:])


SUMMARY_ROWS = (("handheld eager", "8da4w absmax"), ("handheld eager", "8da4w"), ("handheld .pte", "8da4w"),
                ("handheld eager", "8da4w --calib"), ("handheld eager", "8da4w --calib --budget-mb @Q4_K_M"),
                ("handheld .pte", "8da4w --calib --budget-mb @Q4_K_M"),
                ("handheld eager", "8da4w --calib --rotation quarot"),
                ("handheld eager", "8da4w --calib --rotation quarot --budget-mb @Q4_K_M"),
                ("handheld .pte", "8da4w --calib --rotation quarot --budget-mb @Q4_K_M"),
                ("llama.cpp", "Q4_0"), ("llama.cpp", "Q4_K_M"),
                ("llama.cpp", "Q5_K_M"))


def render_summary(report: dict) -> str:
    """The few figures README quotes: perplexity increase over float per text and MB per token, shipped checkpoint
    and off-grid fine-tune."""
    texts = list(report["texts"])
    lines = [f"| option | " + " | ".join(f"{c}: {t}" for c in ("shipped", "fine-tuned") for t in texts) + " | MB/token |",
             "|---|" + "---:|" * (2 * len(texts) + 1)]
    for kind, name in SUMMARY_ROWS:
        cells, size = [], ""
        for checkpoint in ("shipped", "finetuned"):
            row = report["rows"].get(f"{checkpoint}:{kind}:{name}")
            base = report["rows"].get(f"{checkpoint}:handheld eager:float")
            for text in texts:
                cells.append(f"{row['scores'][text]['perplexity'] / base['scores'][text]['perplexity'] - 1:+.1%}"
                             if row and base else "–")
            size = size or (f"{row['bytes_per_token'] / 1e6:.1f}" if row else "")
        label = f"`{name}`" + (" (.pte)" if kind == "handheld .pte" else "") if kind != "llama.cpp" else f"llama.cpp {name}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {size} |")
    return "\n".join(lines) + "\n"
