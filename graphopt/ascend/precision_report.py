"""The report of ``graphopt precision`` (``graphopt.ascend.fp16_sensitivity.analyse``'s result): ``precision.md``
and the sensitivity plot ``sensitivity.png``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["fmt_metric", "report_markdown", "plot_sensitivity"]


def fmt_metric(m: Mapping[str, Any] | None, key: str, spec: str = ".4f") -> str:
    if m is None or m.get(key) is None:
        return "-"
    return format(m[key], spec)


def _one_minus_cos(m: Mapping[str, Any]) -> str:
    return f"{max(1.0 - m['cosine'], 0.0):.2e}"


def report_markdown(result: Mapping[str, Any], title: str = "fp16 precision") -> str:
    lines = [f"# {title}", ""]
    cal = result.get("calibration", {})
    if cal:
        lines.append(f"Calibration: {cal.get('source')}" + (f" (labelled: {cal.get('labelled')})"
                                                            if cal.get("labelled") else ""))
        if cal.get("preprocess"):
            lines.append(f"Images preprocessed as {cal['preprocess']}.")
        if cal.get("warning"):
            lines.append(f"**Warning:** {cal['warning']}.")
        lines.append("")
    ins = result.get("model", {}).get("inputs")
    if ins:
        lines.append("Inputs, per batch (only float32 tensors are rounded to fp16; integer and bool inputs pass "
                     "through): " + "; ".join(f"{i['name']} {i['dtype']} {i['shape']} ({i['values']}"
                                              + (f" {i['range']}" if i.get("range") else "") + ")" for i in ins) + ".")
        lines.append("")
    t = result["target"]
    lines += [f"Target against fp32: top-1 agreement >= {t['top1']}, cosine >= {t['cosine']}. "
              f"{result['units']} units, {result['trials']} trials in {result['seconds']} s.", ""]
    lines += ["## Precision modes (emulated)", "",
              f"On all {result.get('calibration_items')} items, or on those that force_fp16 hurts most, where items "
              "says so.", "",
              "| mode | items | fp16 units | cube FLOPs in fp16 | cosine | 1 - cosine | top-1 agreement | accuracy | "
              "target |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = dict(result.get("baselines", {}))
    if result.get("search", {}).get("result"):
        rows["search keep-set (its configs as ATC applies them)"] = result["search"]["result"]
    if result.get("predicted"):
        rows[f"generated configs ({result['predicted']['precision_mode']})"] = result["predicted"]
    for name, m in rows.items():
        share = "-" if m.get("fp16_flop_share") is None else f"{100 * m['fp16_flop_share']:.1f}%"
        lines.append(f"| {name} | {m.get('items', '-')} | {m['fp16_units']} | {share} | {m['cosine']:.6f} | "
                     f"{_one_minus_cos(m)} | "
                     f"{fmt_metric(m, 'top1_agreement', '.3f')} | {fmt_metric(m, 'accuracy', '.3f')} | "
                     f"{'met' if m['passed'] else 'missed'} |")
    lines += ["", "## Sensitivity per op type", ""]
    if result.get("sensitivity_skipped"):
        lines.append("Not measured: force_fp16 meets the target, so nothing is searched (`graphopt precision "
                     "--sensitivity` measures the sensitivity per op type and the worst units anyway).")
    else:
        lines += [f"Only this type in fp16 (the rest fp32), and everything but this type in fp16, on the "
                  f"{result.get('sensitivity_items')} items force_fp16 hurts most.", "",
                  "| op type | units | cube GFLOPs | only: 1 - cosine | only: top-1 | all but: 1 - cosine | "
                  "all but: top-1 | kept fp32 |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    kept = set(result.get("search", {}).get("keep_types", []))
    for t in sorted(result.get("types", []), key=lambda t: -t["only_fp16"]["error"]):
        lines.append(f"| {t['label']} | {t['units']} | {t['cube_flops'] / 1e9:.3f} | "
                     f"{_one_minus_cos(t['only_fp16'])} | "
                     f"{fmt_metric(t['only_fp16'], 'top1_agreement', '.3f')} | {_one_minus_cos(t['all_but_fp16'])} | "
                     f"{fmt_metric(t['all_but_fp16'], 'top1_agreement', '.3f')} | "
                     f"{'yes' if t['type'] in kept else ''} |")
    if result.get("worst_nodes"):
        lines += ["", "## Worst units", "", "| unit | op type | only: 1 - cosine | only: top-1 | all but: 1 - cosine |"
                  " all but: top-1 |", "|---|---|---:|---:|---:|---:|"]
        for w in result["worst_nodes"]:
            name = w["nodes"][0] + (f" (+{len(w['nodes']) - 1} nodes)" if len(w["nodes"]) > 1 else "")
            lines.append(f"| {name} | {w['ascend_type']} | {_one_minus_cos(w['only_fp16'])} | "
                         f"{fmt_metric(w['only_fp16'], 'top1_agreement', '.3f')} | "
                         f"{_one_minus_cos(w['all_but_fp16'])} | "
                         f"{fmt_metric(w['all_but_fp16'], 'top1_agreement', '.3f')} |")
    search = result.get("search", {})
    lines += ["", "## Keep-set and configs", ""]
    if search.get("force_fp16_meets_target"):
        lines.append("force_fp16 meets the target: nothing needs to stay fp32.")
    else:
        lines.append(f"Kept in fp32 by op type: {', '.join(search.get('keep_types', [])) or 'none'}; "
                     f"by node: {', '.join(search.get('keep_nodes', [])) or 'none'}.")
    for note in search.get("notes", []):
        lines.append(f"- {note}")
    if result.get("gelu"):
        g = result["gelu"]
        hp = g["high_performance"]
        lines.append(f"Gelu ({g['units']} units): high_performance (tanh) gives cosine "
                     f"{fmt_metric(hp, 'cosine', '.6f')}, top-1 {fmt_metric(hp, 'top1_agreement', '.3f')}: "
                     f"chosen {g['chosen']}.")
    lines += ["", "```json", json.dumps(result.get("configs", {}), indent=2), "```"]
    p = result.get("predicted")
    if p:
        acc = "" if p.get("accuracy_change") is None else f", accuracy change {100 * p['accuracy_change']:+.1f} points"
        share = "-" if p.get("fp16_flop_share") is None else f"{100 * p['fp16_flop_share']:.1f}%"
        lines += ["", f"Predicted with these configs: cosine {p['cosine']:.6f}, top-1 agreement "
                      f"{fmt_metric(p, 'top1_agreement', '.3f')}{acc}; Conv/MatMul/Gemm FLOPs in fp16: {share}."]
    h = result.get("holdout")
    if h:
        lines += ["", "## Held-out items", "",
                  f"{h['items']} items the search never saw (`--holdout`): does the keep-set generalise?", "",
                  "| assignment | cosine | 1 - cosine | top-1 agreement | accuracy | target |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, key in (("fp32", "fp32"), ("force_fp16", "force_fp16"),
                          ("search keep-set (force_fp16 + keeps)", "keep_set"),
                          (f"generated configs ({h['predicted']['precision_mode']})", "predicted")):
            m = h[key]
            lines.append(f"| {name} | {m['cosine']:.6f} | {_one_minus_cos(m)} | "
                         f"{fmt_metric(m, 'top1_agreement', '.3f')} | {fmt_metric(m, 'accuracy', '.3f')} | "
                         f"{'met' if m['passed'] else 'missed'} |")
    for w in result.get("warnings", []):
        lines.append(f"**Warning:** {w}.")
    return "\n".join(lines) + "\n"


def plot_sensitivity(result: Mapping[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted(result.get("types", []), key=lambda t: t["only_fp16"]["error"])
    kept = set(result.get("search", {}).get("keep_types", []))
    floor = 1e-9
    only = [max(t["only_fp16"]["error"], floor) for t in types]
    allbut = [max(t["all_but_fp16"]["error"], floor) for t in types]
    y = np.arange(len(types))
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.35 * max(len(types), 1)))
    ax.barh(y - 0.2, only, 0.4, label="only this type in fp16")
    ax.barh(y + 0.2, allbut, 0.4, label="everything but this type in fp16")
    full = result.get("baselines", {}).get("force_fp16")
    if full:
        ax.axvline(max(full["error"], floor), color="k", ls=":", label="force_fp16")
    target = result["target"].get("cosine")
    if target is not None:
        ax.axvline(max(1 - target, floor), color="r", ls="--", label="target (1 - cosine)")
    ax.set_yticks(y)
    ax.set_yticklabels([t["label"] + (" [fp32]" if t["type"] in kept else "") for t in types])
    ax.set_xscale("log")
    ax.set_xlabel("error vs fp32: (1 - cosine) + (1 - top-1 agreement)")
    ax.set_title("fp16 sensitivity per op type (emulated)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
