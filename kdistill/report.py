"""``results.json`` -> ``report.md``: the comparison table and how it was obtained."""

from __future__ import annotations

ROLE_LABELS = {"teacher": "teacher", "baseline": "student alone", "distilled": "student distilled"}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _count(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def comparison_table(results: dict) -> str:
    """The Markdown table: one row per model, metrics on the test split, size and speed."""
    header = ("| model | role | accuracy % | balanced acc % | sensitivity % | specificity % | AUC | ECE "
              "| params | MACs | latency b1 (ms) | throughput b64 (img/s) | speed-up vs teacher |")
    lines = [header, "|" + "---|" * 13]
    for row in results["models"]:
        speedup = row.get("speedup_vs_teacher")
        lines.append(
            f"| {row['name']} | {ROLE_LABELS.get(row['role'], row['role'])} | {_pct(row['accuracy'])} "
            f"| {_pct(row['balanced_accuracy'])} | {_pct(row['sensitivity'])} | {_pct(row['specificity'])} "
            f"| {_num(row['auc'])} | {_num(row['ece'])} | {_count(row['params'])} | {_count(row['macs'])} "
            f"| {_num(row['latency_ms_batch1'], 2)} | {row['throughput_img_s']:.0f} "
            f"| {'n/a' if speedup is None else f'{speedup:.1f}x'} |"
        )
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    dataset = results["dataset"]
    first = results["models"][0]
    positive = dataset.get("positive_class")
    lines = [
        "# kdistill report",
        "",
        f"Data: {dataset.get('root')}; classes {', '.join(dataset['classes'])}"
        + (f"; positive class (sensitivity) {positive}" if positive else "") + ".",
        "",
        "| split | images | per class | source |",
        "|---|---|---|---|",
    ]
    for split, size in dataset.get("sizes", {}).items():
        counts = dataset.get("class_counts", {}).get(split, [])
        source = dataset.get("sources", {}).get(split, "")
        lines.append(f"| {split} | {size} | {' / '.join(map(str, counts))} | {source} |")
    lines += [
        "",
        f"## Results on the {dataset.get('evaluated_on', 'test')} split",
        "",
        comparison_table(results),
        "",
        "- " + (f"Decision threshold {_num(first.get('threshold'), 2)} on the {positive} probability."
                if positive else "Decisions by arg-max."),
        f"- CPU speed: {first['threads']} thread(s); batch-1 latency and batch-64 throughput, "
        "median of repeated rounds after warm-up. MACs counted by torch.utils.flop_counter.",
        "- Every epoch was selected on the validation split only; the test split was used once, "
        "for this table.",
    ]
    for row in results["models"]:
        lines.append(f"- {ROLE_LABELS.get(row['role'], row['role'])}: {_training_summary(row)}")
    doctor = results.get("doctor")
    if doctor:
        lines.append(f"- Data doctor: {len(doctor['unreadable'])} unreadable images, "
                     f"{len(doctor['duplicate_groups'])} byte-identical duplicate groups "
                     f"({len(doctor['duplicate_groups_across_splits'])} across supplied splits), "
                     f"{len(doctor['leaking_groups'])} patients in more than one supplied split.")
    export = results.get("export")
    if export:
        lines.append(f"- Deployable student: {export['path']} (ONNX; max probability difference vs "
                     f"PyTorch {export['max_prob_diff']:.1e} on {export['checked_on']}).")
        int8 = export.get("int8")
        if int8 and int8.get("accuracy_delta") is not None:
            lines.append(f"- Int8 copy: {int8['path']}; accuracy {_pct(int8['accuracy_int8'])}% vs fp32 "
                         f"{_pct(int8['accuracy_fp32'])}% on {int8['checked_on']}.")
    if dataset.get("unused"):
        lines.append(f"- Not used: {dataset['unused']} (too small to select on).")
    if dataset.get("skipped_files"):
        lines.append(f"- {len(dataset['skipped_files'])} unreadable files skipped (see results.json).")
    return "\n".join(lines) + "\n"


def _training_summary(row: dict) -> str:
    """How a model was trained and which epoch was kept, from its checkpoint metadata."""
    training, selected = row.get("training") or {}, row.get("selected")
    parts = []
    if training.get("method") in ("kd", "article"):
        parts.append(f"{training['method']} (alpha {training['alpha']}, T {training['temperature']})")
    if "epochs" in training:
        parts.append(f"{training['epochs']} epochs, batch {training['batch_size']}, "
                     f"{training['optimizer']} lr {training['lr']}, class weighting "
                     f"{training.get('class_weighting', 'none')}")
    if selected:
        value = selected["val"].get(selected["metric"])
        parts.append(f"epoch {selected['epoch']} kept (validation {selected['metric']} {_num(value, 4)})")
    return "; ".join(parts) or "loaded from a checkpoint"
