"""Recall-latency plot of bench/first_stage.py's JSON lines: one panel per corpus size N.

    python -m bench.first_stage ... > first_stage.jsonl
    python -m bench.first_stage_plot --input=first_stage.jsonl --out=docs/first_stage.png \
        [--n=256] [--batch=16]

x: ms per query at --batch queries per call (log scale); y: recall of the exact MaxSim top K
within the first --n candidates. One marker per (stage, setting), one colour per stage; the
exact brute force is drawn as a vertical line (its latency) for the 1/10 budget.
"""

from __future__ import annotations

import json

from absl import app, flags

_INPUT = flags.DEFINE_string("input", None, "JSON lines of bench/first_stage.py.", required=True)
_OUT = flags.DEFINE_string("out", None, "PNG to write.", required=True)
_N = flags.DEFINE_integer("n", 256, "Candidates n whose recall is plotted.")
_BATCH = flags.DEFINE_string("batch", "16", "Batch size whose ms per query is plotted.")


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot(records: list[dict], out: str, n: int, batch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({record["images"] for record in records})
    figure, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    stages = sorted({record["stage"] for record in records})
    colours = {stage: plt.cm.tab10(index % 10) for index, stage in enumerate(stages)}
    for axis, size in zip(axes[0], sizes):
        rows = [record for record in records if record["images"] == size]
        for record in rows:
            recall_key = next(key for key in record if key.startswith("recall_exact_top"))
            recall = record[recall_key].get(str(n))
            latency = record["ms_per_query"].get(batch)
            if recall is None or latency is None:
                continue
            if record["stage"] == "exact":
                axis.axvline(latency, color="black", linestyle=":", linewidth=1)
                axis.axvline(latency / 10, color="grey", linestyle="--", linewidth=1)
                continue
            axis.scatter(latency, recall, color=colours[record["stage"]], s=22)
        for stage in stages:
            if stage != "exact" and any(record["stage"] == stage for record in rows):
                axis.scatter([], [], color=colours[stage], label=stage)
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.axhline(0.95, color="grey", linewidth=0.5)
        axis.set_title(f"N = {size:,}: exact MaxSim (dotted), 1/10 of it (dashed)")
        axis.set_xlabel(f"ms per query (batches of {batch}, 2-core CPU)")
        axis.set_ylabel(f"recall of the exact top {rows[0]['reference_k']} within n = {n}")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    plot(load(_INPUT.value), _OUT.value, _N.value, _BATCH.value)


if __name__ == "__main__":
    app.run(main)
