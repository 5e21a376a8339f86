"""Tables and plots of the issue-3 sweep, from its records.

    python benchmarks/plots.py benchmarks/results/sweep.json   # redraw NAME.md and the PNGs

``markdown(records)`` gives the results table and the "how cost grows" table; ``plot_all``
draws ``NAME_queries.png`` (queries against parameters, log-log: this engine, ART, the paper and
the floor ``(P - h) / k``) and ``NAME_time.png`` (wall time against parameters).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _fid(rec) -> str:
    return f"{_fmt(rec.get('fidelity'), '.6g')} / {_fmt(rec.get('fidelity_digits'), '.6g')}"


def _param_error(rec) -> str:
    if rec.get("param_error") is not None:
        return f"{rec['param_error']:.1e}"
    if rec.get("missing") or rec.get("extra"):
        return f"inf ({rec.get('missing', 0)} missing, {rec.get('extra', 0)} extra)"
    return "-"


def _victim_name(rec) -> str:
    if rec.get("method") == "paper":
        return rec["victim"]
    kind, *sizes, seed = rec["victim"].split("-")
    return f"{kind} {'-'.join(sizes)}" + ("" if seed == "s0" else f" ({seed})")


def _time(rec) -> str:
    s = rec.get("seconds")
    if s is None:
        return "-"
    if rec.get("status") == "timeout":
        return f"> {rec.get('timeout_s') or s:.0f} (cap)"
    c = rec.get("compile_seconds")
    return f"{s:.2f}" + ("" if c is None else f" (+{c:.2f})")


def markdown(records: list[dict]) -> str:
    """The results table, the paper's rows, and the cost-growth table, as markdown."""
    runs = [r for r in records if r.get("method") != "paper"]
    backends = sorted({f"{r.get('backend')} ({r.get('device')})" for r in runs
                       if r.get("device")})
    lines = [f"Backend: {', '.join(backends) or '-'}. Fidelity on Gaussian inputs / on the digits "
             "images; time in seconds, warm (+ JIT compilation apart); peak memory is the worker "
             "process's high-water RSS.", "",
             "| method | victim | params | units found | queries | queries / param | floor (P-h)/k "
             "| fidelity (Gauss / digits) | max rel. error | param. error | time s (+compile) "
             "| peak MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        units = f"{_fmt(r.get('hidden'), 'd')}/{r.get('true_hidden')}"
        if r.get("matched") is not None and r["matched"] != r.get("hidden"):
            units += f" ({r['matched']} matched)"
        queries = _fmt(r.get("queries"), ",")
        if r.get("status") == "timeout" and r.get("queries") is not None:
            queries = f"> {queries}"
        lines.append(
            f"| {r['method']} | {_victim_name(r)} | {r.get('params', 0):,} "
            f"| {units} | {queries} "
            f"| {_fmt(r.get('queries_per_param'), '.2f')} | {_fmt(r.get('floor_queries'), ',.0f')} "
            f"| {_fid(r)} | {_fmt(r.get('max_rel_error'), '.1e')} | {_param_error(r)} "
            f"| {_time(r)} | {_fmt(r.get('peak_mb'), '.0f')} | {r.get('status')} |")
    paper = [r for r in records if r.get("method") == "paper"]
    if paper:
        lines += ["", "The 2020 paper's rows (Jagielski et al., as quoted in issue 3):", "",
                  "| params | hidden | queries | queries / param | fidelity |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['params']:,} | {r['hidden']} | ~{r['queries']:,} "
                  f"| {r['queries_per_param']:.1f} | {r['fidelity']:.4g} |" for r in paper]
    lines += ["", "### How cost grows (this engine)", ""] + growth_lines(records)
    return "\n".join(lines) + "\n"


def _fit(x, y) -> Optional[float]:
    """Exponent ``a`` of ``y ~ x^a`` by least squares on logs (``None`` with < 2 points)."""
    pts = [(a, b) for a, b in zip(x, y) if a and b and a > 0 and b > 0]
    if len({a for a, _ in pts}) < 2:
        return None
    lx, ly = np.log([a for a, _ in pts]), np.log([b for _, b in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def growth_lines(records: list[dict]) -> list[str]:
    """This engine's queries and time against d, h and k, from the successful runs."""
    ok = [r for r in records if r.get("method") == "fidelity" and r.get("status") == "ok"]
    if not ok:
        return ["(no successful runs)"]
    out = ["| kind | d | h | k | params | queries | queries / floor | time s | compile s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(ok, key=lambda r: (r.get("kind", ""), r["outputs"], r["input_dim"],
                                       r["true_hidden"])):
        ratio = r["queries"] / r["floor_queries"] if r.get("floor_queries") else None
        out.append(f"| {r.get('kind')} | {r['input_dim']} | {r['true_hidden']} | {r['outputs']} "
                   f"| {r['params']:,} | {r['queries']:,} | {_fmt(ratio, '.2f')} "
                   f"| {_fmt(r.get('seconds'), '.2f')} | {_fmt(r.get('compile_seconds'), '.2f')} |")
    out.append("")
    for k in sorted({r["outputs"] for r in ok}):
        grp = [r for r in ok if r["outputs"] == k and r["input_dim"] == 784]
        a_q = _fit([r["params"] for r in grp], [r["queries"] for r in grp])
        a_t = _fit([r["params"] for r in grp], [r.get("seconds") for r in grp])
        if a_q is not None:
            out.append(f"- d = 784, k = {k}, h = {min(r['true_hidden'] for r in grp)}.."
                       f"{max(r['true_hidden'] for r in grp)}: queries ~ P^{a_q:.2f}, "
                       f"warm time ~ P^{_fmt(a_t, '.2f')} ({len(grp)} runs).")
    pairs = [(a, b) for a in ok for b in ok
             if a.get("kind") == b.get("kind") and a["true_hidden"] == b["true_hidden"]
             and a["outputs"] == b["outputs"] and a["input_dim"] < b["input_dim"]]
    for a, b in pairs:
        out.append(f"- d {a['input_dim']} -> {b['input_dim']} ({a.get('kind')}, h = "
                   f"{a['true_hidden']}, k = {a['outputs']}): queries x"
                   f"{b['queries'] / a['queries']:.2f}, time x"
                   f"{b['seconds'] / a['seconds']:.2f}.")
    return out


def _series(records, method, pred=lambda r: True, y="queries"):
    pts = [(r["params"], r[y]) for r in records
           if r.get("method") == method and pred(r) and r.get(y) and r.get("params")]
    return sorted(pts)


def plot_all(records: list[dict], out: Path, name: str = "sweep") -> list[Path]:
    """Writes ``NAME_queries.png`` and ``NAME_time.png`` into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = []
    device = next((f"{r['backend']}: {r['device']}" for r in records
                   if r.get("method") == "fidelity" and r.get("device")), "")
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    timed_out = lambda r: r.get("status") == "timeout"  # noqa: E731

    # --- queries against parameters
    one = lambda r: r.get("outputs") == 1  # noqa: E731
    groups = (("k=1", "^", one), ("k>1", "o", lambda r: not one(r)))
    fig, ax = plt.subplots(figsize=(7, 5))
    exact = lambda r: r.get("fidelity") == 1.0  # noqa: E731
    for method, who, color in (("fidelity", "fidelity (this engine)", "tab:blue"),
                               ("art", "ART", "tab:red")):
        for label, marker, pick in groups:
            pts = _series(records, method, lambda r: ok(r) and pick(r) and exact(r))
            if pts:
                ax.plot(*zip(*pts), marker, color=color, label=f"{who}, {label}")
            pts = _series(records, method, lambda r: ok(r) and pick(r) and not exact(r))
            if pts:
                ax.plot(*zip(*pts), marker, color=color, mfc="none",
                        label=f"{who}, {label}, fidelity < 1")
    pts = _series(records, "art", timed_out)
    if pts:
        ax.plot(*zip(*pts), "x", color="tab:red", label="ART timed out (queries so far)")
    pts = _series(records, "paper")
    if pts:
        ax.plot(*zip(*pts), "s-", color="black", label="Jagielski et al. 2020")
    for i, k in enumerate(sorted({r["outputs"] for r in records if r.get("method") == "fidelity"
                                  and r.get("outputs") and r.get("floor_queries")})):
        floor = sorted({(r["params"], r["floor_queries"]) for r in records
                        if r.get("method") == "fidelity" and r.get("outputs") == k
                        and r.get("floor_queries")})
        ax.plot(*zip(*floor), "_--", color="grey", lw=1, ms=10,
                label="floor (P - h) / k" if i == 0 else None)
        ax.annotate(f"k={k}", floor[-1], textcoords="offset points", xytext=(6, -3),
                    fontsize=7, color="grey")
    _finish(ax, "parameters P", "queries", "Queries to extract a one-hidden-layer ReLU network"
            + (f"\n({device})" if device else ""))
    paths.append(out / f"{name}_queries.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # --- wall time against parameters
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = _series(records, "fidelity", ok, y="seconds")
    if pts:
        ax.plot(*zip(*pts), "o", color="tab:blue", label="fidelity, warm")
    cold = [(r["params"], r["seconds"] + r["compile_seconds"]) for r in records
            if r.get("method") == "fidelity" and ok(r) and r.get("seconds")
            and r.get("compile_seconds") is not None]
    if cold:
        ax.plot(*zip(*sorted(cold)), "o", mfc="none", color="tab:blue",
                label="fidelity, incl. JIT compilation")
    pts = _series(records, "art", ok, y="seconds")
    if pts:
        ax.plot(*zip(*pts), "o", color="tab:red", label="ART")
    pts = _series(records, "art", timed_out, y="seconds")
    if pts:
        ax.plot(*zip(*pts), "^", mfc="none", color="tab:red", label="ART timed out (cap)")
    _finish(ax, "parameters P", "wall time (s)", "Extraction wall time"
            + (f"\n({device})" if device else ""))
    paths.append(out / f"{name}_time.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _finish(ax, xlabel, ylabel, title):
    if ax.lines:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.figure.tight_layout()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/plots.py RESULTS.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    records = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(records))
    for p in plot_all(records, path.parent, path.stem):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
