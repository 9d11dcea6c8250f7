"""Reports: ``report.json`` for machines, ``report.md`` and a terminal table for people."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

__all__ = ["pass_table", "report_markdown", "report_json"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _stats_text(stats: Mapping[str, Any], limit: int = 60) -> str:
    parts = []
    for k, v in stats.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, separators=(",", ":"))
        parts.append(f"{k}={v}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pass_table(passes: Sequence[Mapping[str, Any]], markdown: bool = True) -> str:
    """One row per pass: status, seconds, verification metrics, stats."""
    head = ["#", "pass", "status", "seconds", "max_abs", "max_rel", "cosine", "top1", "verified", "stats"]
    rows = []
    for i, p in enumerate(passes, 1):
        v = p.get("verify") or {}
        verified = "-" if not v else ("yes" if v.get("passed") else "NO")
        rows.append([str(i), p["name"], p["status"], f"{p['seconds']:.2f}", _fmt(v.get("max_abs"), ".2e"),
                     _fmt(v.get("max_rel"), ".2e"), _fmt(v.get("cosine"), ".7f"), _fmt(v.get("top1_agreement"), ".3f"),
                     verified, _stats_text(p.get("stats", {}))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def _ops_table(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    ops = sorted(set(before) | set(after))
    rows = ["| op type | before | after |", "|---|---:|---:|"]
    rows += [f"| {op} | {before.get(op, 0)} | {after.get(op, 0)} |" for op in ops
             if before.get(op, 0) != after.get(op, 0)]
    return "\n".join(rows) if len(rows) > 2 else "(no op-type count changed)"


def report_markdown(report: Mapping[str, Any]) -> str:
    out = [f"# graphopt report: {report['recipe']['name']}", ""]
    src = report["source"]
    inputs = report.get("inputs") or [report["input"]]
    shown = ", ".join(f"`{i['name']}` {i.get('dtype', '') + ' ' if i.get('dtype') else ''}{i['shape']}"
                      + (f" (values {i['values']}{' ' + str(i['range']) if 'range' in i else ''})"
                         if len(inputs) > 1 or i.get("values") not in (None, "normal") else "")
                      for i in inputs)
    out.append(f"Source: `{src['path']}` ({'cached export' if src.get('cached') else src['kind']}), "
               f"input{'s' if len(inputs) > 1 else ''} {shown}.")
    v = report.get("verification")
    if v:
        out.append(f"Verification: {v['samples']} batch(es) of {v['inputs']}, tolerance {v['tolerance']}.")
    else:
        out.append("Verification: off.")
    out += ["", "## Passes", "", pass_table(report["passes"]), ""]
    final = report.get("final_verify")
    if final:
        out += ["## Output model against input model", "",
                f"max_abs {final['max_abs']:.3e}, max_rel {final['max_rel']:.3e}, cosine {final['cosine']:.8f}, "
                f"top-1 agreement {_fmt(final['top1_agreement'], '.4f')}: "
                f"{'within' if final['passed'] else 'OUTSIDE'} tolerance.", ""]
    out += ["## Op types changed", "", _ops_table(report["ops_before"], report["ops_after"]), ""]
    absent = report.get("configs_absent_types")
    if absent:
        out += ["## Kept op types the graph lacks", "",
                f"The ATC configs keep {', '.join(f'`{a}`' for a in absent)}, which no op of the graph maps to: "
                "ATC can still form them by fusion (LayerNorm from a decomposed layer norm).", ""]
    if report.get("files"):
        out += ["## Files", ""] + [f"- `{f}`" for f in report["files"]] + [""]
    return "\n".join(out)


def report_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"
