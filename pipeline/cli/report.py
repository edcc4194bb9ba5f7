"""The result block a run prints: read from summary.json's dict, no TF needed."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, List, Optional

from tfx_transfer.modules import contract
from tfx_transfer.pipeline.cli.progress import LOG_DIR, RUN_LOG, seconds

# Components in the order the pipeline runs them; anything else follows.
PIPELINE_ORDER = ("ImageExampleGen", "ImportExampleGen", "StatisticsGen", "SchemaGen",
                  "ExampleValidator", "Transform", "Trainer", "latest_blessed_model_resolver",
                  "Evaluator", "EmbeddingProjector", "Pusher")


def pct(x: Optional[float], digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def params(n: Optional[int]) -> str:
    if n is None:
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return str(n)


def ordered_timings(timings: Dict[str, float]) -> List[tuple]:
    rank = {n: i for i, n in enumerate(PIPELINE_ORDER)}
    nodes = [n for n in timings if n != "total_wall"]
    nodes.sort(key=lambda n: (rank.get(n, len(rank)), list(timings).index(n)))
    return [(n, timings[n]) for n in nodes]


def class_table(per_class: Dict[str, Dict[str, Any]]) -> List[str]:
    width = max([5] + [len(c) for c in per_class])
    lines = [f"    {'class':<{width}}  {'precision':>9}  {'recall':>8}  {'F1':>8}  {'images':>6}"]
    for name, v in sorted(per_class.items()):  # name order, as the confusion matrix
        lines.append(f"    {name:<{width}}  {pct(v['precision'], 1):>9}  {pct(v['recall'], 1):>8}  "
                     f"{pct(v['f1'], 1):>8}  {v['support']:>6}")
    return lines


def result_block(summary: Dict[str, Any], output: str) -> str:
    m = summary.get("metrics") or {}
    classes = summary.get("classes") or []
    lines = [f"{summary['backbone']} {summary['mode']} at {summary['image_size']} px: "
             f"{len(classes)} classes, {summary.get('train_examples') or '?'} training and "
             f"{summary.get('eval_examples') or '?'} evaluation images"]
    scores = [f"accuracy {pct(m.get('accuracy'))}"]
    if m.get("top5_accuracy") is not None:
        scores.append(f"top-5 {pct(m['top5_accuracy'])}")
    if m.get("macro_f1") is not None:
        scores.append(f"macro F1 {pct(m['macro_f1'])}")
    lines.append("  " + "   ".join(scores))
    rule = (summary.get("blessing") or {}).get("rule")
    verdict = "blessed" if summary.get("blessed") else "NOT blessed"
    lines.append(f"  {verdict}" + (f": the bar was {rule}" if rule else ""))
    if m.get("per_class"):
        lines += class_table(m["per_class"])
    skipped = summary.get("skipped_files") or []
    if skipped:
        examples = (summary.get("artifacts", {}).get("ImageExampleGen", {}).get("examples") or [""])[0]
        reasons = Counter(s.get("reason", "?") for s in skipped)
        lines.append(f"  skipped {len(skipped)} files ("
                     + ", ".join(f"{n} {r}" for r, n in reasons.most_common())
                     + f"): {os.path.join(examples, contract.SKIPPED_FILES_FILE)}")
    if summary.get("ignored_files"):
        lines.append(f"  ignored {summary['ignored_files']} files that are not images by name "
                     "(not counted as bad): "
                     f"{summary['ignored_files_list']}")
    timings = summary.get("timings_s") or {}
    if timings:
        lines.append("  time: " + ", ".join(f"{n} {seconds(s)}" for n, s in ordered_timings(timings))
                     + (f"; total {seconds(timings['total_wall'])}" if "total_wall" in timings else ""))
    model = (summary.get("artifacts", {}).get("Trainer", {}).get("model") or [None])[0]
    pushed = summary.get("pushed_model_dir")
    result = summary.get("push_result")  # "pushed as version N" / "already serving as version N"
    lines.append(f"  model:   {pushed or model or '–'}"
                 + (f"  ({result})" if pushed and result else "" if pushed else "  (not pushed)"))
    lines.append(f"  summary: {os.path.join(output, contract.SUMMARY_FILE)}")
    figures = [p for p in (os.path.join(output, "confusion_matrix.png"),) if os.path.exists(p)]
    files = (summary.get("projector") or {}).get("files") or {}
    figures += [files[k] for k in ("figure", "report") if k in files]
    if figures:
        lines.append(f"  figures: {', '.join(figures)}")
    lines.append(f"  logs:    {os.path.join(output, LOG_DIR, RUN_LOG)}")
    return "\n".join(lines)


def leaderboard_table(rows: List[Dict[str, Any]]) -> str:
    """`compare`'s ranking for the terminal: percentages, 2.27 M parameters, – for none."""
    head = ("backbone", "mode", "unfrozen", "size", "accuracy", "top-5", "macro F1",
            "train", "params", "blessed")
    table = [head]
    for r in sorted(rows, key=lambda r: -(r.get("accuracy") or 0)):
        table.append((
            r["backbone"], r["mode"], str(r["unfreeze_groups"]) if r.get("unfreeze_groups") else "–",
            f"{r['image_size']} px" if r.get("image_size") else "–",
            pct(r.get("accuracy")), pct(r.get("top5_accuracy")), pct(r.get("macro_f1")),
            seconds(r["train_s"]) if r.get("train_s") is not None else "–",
            params(r.get("params")), "yes" if r.get("blessed") else "no"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in table)
