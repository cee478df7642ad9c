"""Output of lateint.evaluation.main: JSON, Markdown tables and the rsum-vs-latency plot.

Records are lateint.evaluation.harness's: one dict per scorer x N with 'recall' {protocol: summary|None},
'latency_ms', 'bytes_per_image', 'exhaustive_subset', 'num_images', 'notes', ...
"""

from __future__ import annotations

import os

import numpy as np

from lateint import atomic
from lateint.evaluation.latency import LATENCY_KEYS

MISSING = "—"


def label(record: dict) -> str:
    """'joint_exhaustive', 'global', 'maxsim' or 'staged:<first stage>'."""
    if record["scorer"] == "staged":
        return f"staged:{record['first_stage']}"
    return record["scorer"]


def _plain(value):
    """JSON-ready copies of NumPy scalars and arrays."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: str, payload) -> None:
    """Writes payload as indented JSON (atomically, lateint.atomic)."""
    atomic.write_json(path, _plain(payload), indent=1, make_parents=True)


def _number(value, digits: int = 1) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and value >= 10**4:
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def recall_table(records: list[dict], protocol: str = "full") -> str:
    """One row per scorer x N: R@1/5/10 both directions, rsum, medr/meanr (protocol), the
    t2i R@10 on the exhaustive model's query subset, latency per stage and bytes per image."""
    header = [
        "scorer",
        "N",
        "t2i R@1",
        "R@5",
        "R@10",
        "i2t R@1",
        "R@5",
        "R@10",
        "rsum",
        "t2i medr",
        "t2i meanr",
        "R@10 t2i (subset q)",
    ]
    header += [f"{key} ms" for key in LATENCY_KEYS] + ["bytes/image"]
    rows = []
    for record in records:
        summary = record["recall"].get(protocol)
        if summary is None:
            continue
        subset = record["exhaustive_subset"]
        row = [label(record), str(record["num_images"])]
        row += [
            _number(summary[key])
            for key in (
                "t2i_r1",
                "t2i_r5",
                "t2i_r10",
                "i2t_r1",
                "i2t_r5",
                "i2t_r10",
                "rsum",
                "t2i_medr",
                "t2i_meanr",
            )
        ]
        row.append(f"{_number(subset['t2i_r10'])} ({subset['queries']})")
        row += [_number(record["latency_ms"][key]) for key in LATENCY_KEYS]
        row.append(f"{record['bytes_per_image']['total']:.0f}")
        rows.append(row)
    return _table(header, rows)


def relational_table(records: list[dict]) -> str:
    """Scenes corpora: one row per scorer (at the split's own N): strict t2i R@1/R@10, oracle
    R@1/R@10 (overall and R@1 per caption kind), partner accuracy and ms per query."""
    header = [
        "scorer",
        "N",
        "queries",
        "strict R@1",
        "strict R@10",
        "oracle R@1",
        "oracle R@10",
        "oracle R@1 inventory",
        "relation",
        "count",
        "partner acc",
        "ms/query",
    ]
    rows = []
    for record in records:
        oracle, partner = record.get("oracle"), record.get("partner")
        if not oracle:
            continue
        strict = (
            record["exhaustive_subset"]
            if record["scorer"] == "joint_exhaustive"
            else record["recall"]["full"]
        )
        rows.append(
            [
                label(record),
                str(record["num_images"]),
                str(oracle["queries"]),
                _number(strict["t2i_r1"]),
                _number(strict["t2i_r10"]),
                _number(oracle["oracle_r1"]),
                _number(oracle["oracle_r10"]),
            ]
            + [
                _number(oracle.get(f"oracle_r1/{kind}"))
                for kind in ("inventory", "relation", "count")
            ]
            + [_number(partner["partner_accuracy"]), _number(record["latency_ms"]["total"])]
        )
    return _table(header, rows) if rows else ""


def speedup_table(records: list[dict]) -> str:
    """Per N and first stage: staged vs exhaustive joint t2i R@10 on the exhaustive model's
    query subset (relative difference) and the per-query latency speedup."""
    header = [
        "N",
        "first stage",
        "queries",
        "exhaustive R@10",
        "staged R@10",
        "relative",
        "exhaustive ms",
        "staged ms",
        "speedup",
    ]
    rows = []
    for count in sorted({record["num_images"] for record in records}):
        group = [record for record in records if record["num_images"] == count]
        exhaustive = [record for record in group if record["scorer"] == "joint_exhaustive"]
        if not exhaustive:
            continue
        baseline = exhaustive[0]
        base_recall = baseline["exhaustive_subset"]["t2i_r10"]
        base_ms = baseline["latency_ms"]["total"]
        for record in group:
            if record["scorer"] != "staged":
                continue
            recall = record["exhaustive_subset"]["t2i_r10"]
            relative = (
                None
                if recall is None or not base_recall
                else 100.0 * (recall - base_recall) / base_recall
            )
            rows.append(
                [
                    str(count),
                    record["first_stage"],
                    str(record["exhaustive_subset"]["queries"]),
                    _number(base_recall),
                    _number(recall),
                    "n/a" if relative is None else f"{relative:+.1f}%",
                    _number(base_ms),
                    _number(record["latency_ms"]["total"]),
                    f"{base_ms / record['latency_ms']['total']:.0f}x",
                ]
            )
    return _table(header, rows)


def indexes_text(records: list[dict]) -> str:
    """One line per evaluated INDEX: its path, the storage mode of its activations and N."""
    seen = dict.fromkeys(
        (record["index"], record["storage"], record["num_images"]) for record in records
    )
    return "\n".join(
        f"INDEX {index}: {storage} activations, N={count}" for index, storage, count in seen
    )


def markdown(records: list[dict], protocols=("full", "1k5fold", "5k")) -> str:
    """The INDEXes (path, storage mode, N), the tables of every protocol that has a value,
    then the speedup table and the notes."""
    parts = [indexes_text(records)]
    relational = relational_table(records)
    if relational:
        parts.append(
            "Relations (oracle recall: a hit when a top image is a scene the caption is "
            "true of; partner accuracy: caption vs its scene's group partner, chance "
            "50; strict recall of joint_exhaustive on its query subset):\n\n" + relational
        )
    for protocol in protocols:
        if any(record["recall"].get(protocol) for record in records):
            parts.append(f"Protocol `{protocol}`:\n\n" + recall_table(records, protocol))
    parts.append(
        "Staged pipeline vs the exhaustive joint model, on the exhaustive model's "
        "queries:\n\n" + speedup_table(records)
    )
    notes: dict[str, list[str]] = {}  # note -> the scorers (and N) it applies to
    for record in records:
        where = f"{label(record)} (N={record['num_images']})"
        lines = list(record["notes"]) + [
            f"first stage {name}: skipped, {reason}"
            for name, reason in record.get("skipped_first_stages", {}).items()
        ]
        for line in lines:
            notes.setdefault(line, []).append(where)
    notes = [f"- {line}: {', '.join(dict.fromkeys(scorers))}" for line, scorers in notes.items()]
    parts.append("Notes:\n\n" + "\n".join(notes))
    return "\n\n".join(parts) + "\n"


def plot(records: list[dict], path: str, protocol: str = "full") -> None:
    """rsum against per-query latency (log x): one point per scorer and N; colour = scorer,
    marker = N."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = sorted({label(record) for record in records})
    sizes = sorted({record["num_images"] for record in records})
    colours = {name: pyplot.get_cmap("tab10")(index % 10) for index, name in enumerate(names)}
    markers = dict(zip(sizes, "osD^v<>ph*"))
    figure, axes = pyplot.subplots(figsize=(8, 5.5))
    for name in names:
        for count in sizes:
            points = [
                record
                for record in records
                if label(record) == name
                and record["num_images"] == count
                and record["recall"].get(protocol)
                and record["recall"][protocol]["rsum"] is not None
            ]
            for record in points:
                axes.scatter(
                    record["latency_ms"]["total"],
                    record["recall"][protocol]["rsum"],
                    color=colours[name],
                    marker=markers[count],
                    s=60,
                    edgecolors="black",
                    linewidths=0.5,
                )
        series = sorted(
            (
                record["num_images"],
                record["latency_ms"]["total"],
                record["recall"][protocol]["rsum"],
            )
            for record in records
            if label(record) == name
            and record["recall"].get(protocol)
            and record["recall"][protocol]["rsum"] is not None
        )
        if len(series) > 1:
            axes.plot(
                [point[1] for point in series],
                [point[2] for point in series],
                color=colours[name],
                linewidth=0.8,
                alpha=0.6,
            )
    for name in names:
        axes.scatter([], [], color=colours[name], marker="s", label=name)
    for count in sizes:
        axes.scatter(
            [], [], color="white", edgecolors="black", marker=markers[count], label=f"N = {count:,}"
        )
    axes.set_xscale("log")
    axes.set_xlabel("per-query latency, ms (single queries, median; log scale)")
    axes.set_ylabel(f"rsum (protocol {protocol})")
    axes.set_title("Recall vs latency per scorer (lines join the same scorer across N)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def samples_text(samples: list[dict], top: int = 5) -> str:
    """Sample queries with their top ids and scores, one block per query (scenes corpora: each
    hit marked with whether the caption is true of it)."""
    lines = []
    for sample in samples:
        lines.append(
            f"query: {sample['query']!r} (written for {sample['true_image']}, first "
            f"stage {sample['first_stage']})"
        )
        for rank, hit in enumerate(sample["top5"][:top], 1):
            marks = []
            if hit["id"] == sample["true_image"]:
                marks.append("the image it was written for")
            if "caption_true" in hit:
                marks.append("caption true of it" if hit["caption_true"] else "caption false")
            lines.append(
                f"  {rank}. {hit['id']}  {hit['score']:.4f}"
                + (f"  ({'; '.join(marks)})" if marks else "")
            )
    return "\n".join(lines)


def summary(records: list[dict], samples: list[dict]) -> str:
    """The short printout: the INDEXes (path, storage mode, N), one row per scorer (relations
    table on scenes corpora, else strict recall of the full protocol), two sample queries with
    their top 3."""
    table = relational_table(records)
    if not table:
        table = recall_table(records, "full")
    return (
        indexes_text(records)
        + "\n\n"
        + table
        + "\n\nSample queries (top 3):\n"
        + samples_text(samples[:2], top=3)
    )
