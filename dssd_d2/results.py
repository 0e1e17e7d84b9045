"""Documented results: the run records kept in ``results/`` and the docs tables rendered from them.

A record (:mod:`dssd_d2.run_record`) copied into ``results/<study>/<name>.json`` by
``tools/add_result.py`` names the tables it belongs to. :func:`render_docs` writes each table
between its markers (``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->``) in the docs pages, and
``tools/make_tables.py --check`` (run by the tests) fails when a committed page differs from what
the records give: no number in a docs table is typed by hand.
"""

import glob
import json
import os
import re
import statistics
from collections import defaultdict

__all__ = [
    "RESULTS_DIR",
    "TABLES",
    "load_model_stats",
    "load_record",
    "load_records",
    "render_docs",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "results")
# tools/model_stats.py --record: parameters, GFLOPs and default boxes of the shipped configs.
MODEL_STATS = os.path.join(RESULTS_DIR, "model_stats.json")
_REQUIRED = ("tool", "config_file", "commit", "date", "cpu", "threads", "datasets", "iterations",
             "batch_size", "training_minutes", "metrics", "label", "tables")


def load_record(path: str) -> dict:
    """A results/ record, checked for the fields the tables read; ``path`` kept in ``_path``."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable run record ({e})") from e
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{path}: run record without {missing} (write it with tools/add_result.py)")
    record["_path"] = os.path.relpath(os.path.abspath(path), RESULTS_DIR)
    return record


def load_records(results_dir: str | None = None) -> list:
    """Every run record under ``results_dir`` (default: results/; in its study folders), in
    path order."""
    results_dir = results_dir or RESULTS_DIR
    paths = sorted(glob.glob(os.path.join(results_dir, "*", "**", "*.json"), recursive=True))
    return [load_record(p) for p in paths]


def _cpu(record) -> str:
    flags = set(record["cpu"]["flags"])
    isa = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    vendor = "Xeon" if "Xeon" in record["cpu"]["model"] else record["cpu"]["model"].split()[0]
    return f"{vendor} {isa}"


def _test_metrics(record) -> tuple:
    """(test dataset, its metrics) of a record with one test dataset."""
    (name, metrics), *more = record["metrics"].items()
    if more:
        raise ValueError(f"{record['_path']}: the tables take records of one test dataset")
    return name, metrics


def _link(path: str, page: str) -> str:
    """``path`` (relative to the project root) as a Markdown link from the docs page ``page``."""
    return os.path.relpath(os.path.join(ROOT, path), os.path.dirname(os.path.join(ROOT, page)))


def _how(record, page) -> str:
    """A link to what trained the run: our config, or the peer tool (given the config of the run
    it stood beside only for that run's data)."""
    path = record["config_file"]
    if record["tool"].startswith("peer_"):
        path = "tools/" + record["tool"]
    return f"[{os.path.basename(path)}]({_link(path, page)})"


def _per_class(metrics) -> str:
    """Each class's AP50, with its AP75 after a slash where the record has them (the VOC-style
    evaluator's), else its AP (COCO's evaluator)."""
    classes = sorted(k[len("bbox/AP50-"):] for k in metrics if k.startswith("bbox/AP50-"))
    if not classes:
        classes = sorted(k[len("bbox/AP-"):] for k in metrics if k.startswith("bbox/AP-"))
        return ", ".join(f"{c} AP {metrics['bbox/AP-' + c]:.1f}" for c in classes)
    return ", ".join(
        f"{c} {metrics['bbox/AP50-' + c]:.1f}"
        + (f"/{metrics['bbox/AP75-' + c]:.1f}" if f"bbox/AP75-{c}" in metrics else "")
        for c in classes
    )


def _run_cells(record, metrics, page) -> tuple:
    """The cells every run table shows: (minutes and steps, scores, link to the record)."""
    steps = f"| {record['training_minutes']:.1f} | {record['iterations']} x {record['batch_size']} "
    scores = (
        f"| {metrics['bbox/AP']:.1f} | {metrics['bbox/AP50']:.1f} | {metrics['bbox/AP75']:.1f} "
        f"| {_per_class(metrics)} "
    )
    link = f"| [{os.path.basename(record['_path'])}]({_link('results/' + record['_path'], page)}) |"
    return steps, scores, link


def _with_peer_ap(records, order):
    """(record, its test dataset, its metrics, its peer's AP or None), sorted by ``order``."""
    by_path = {r["_path"]: r for r in records}
    for r in sorted(records, key=order):
        dataset, metrics = _test_metrics(r)
        peer = by_path.get(r.get("peer", ""))
        yield r, dataset, metrics, _test_metrics(peer)[1]["bbox/AP"] if peer else None


def _cpu_30min(records, page):
    rows = [
        "| data | model | config | CPU | date | minutes | iterations x batch | AP | AP50 | AP75 "
        "| per class: AP50/AP75 (or AP) | AP / peer's | record |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_date = lambda r: (_test_metrics(r)[0], r["date"], r["label"])  # noqa: E731
    for r, dataset, m, peer_ap in _with_peer_ap(records, by_date):
        ratio = f"{m['bbox/AP'] / peer_ap:.2f}x" if peer_ap is not None else ""
        steps, scores, link = _run_cells(r, m, page)
        rows.append(
            f"| {dataset} | {r['label']} | {_how(r, page)} | {_cpu(r)} | {r['date'][:10]} "
            f"{steps}{scores}| {ratio} {link}"
        )
    return rows


def _lever(record) -> str:
    """The overrides that make a run differ from its config, without the data and output
    ones every run of a study sets."""
    overrides, shown = record.get("overrides", []), []
    for key, value in zip(overrides[::2], overrides[1::2]):
        if not key.startswith(("DATASETS.", "OUTPUT_DIR")):
            shown.append(f"{key} {value}")
    return "`" + " ".join(shown) + "`" if shown else "(the config)"


def _levers(records, page):
    """One recipe lever per row, its AP against the baseline run it is compared with (its
    peer)."""
    rows = [
        "| data | lever | overrides | CPU | minutes | iterations x batch | AP | AP50 | AP75 "
        "| per class: AP50/AP75 (or AP) | AP - baseline's | record |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline_first = lambda r: (_test_metrics(r)[0], "peer" in r, r["label"])  # noqa: E731
    for r, dataset, m, peer_ap in _with_peer_ap(records, baseline_first):
        delta = f"{m['bbox/AP'] - peer_ap:+.1f}" if peer_ap is not None else ""
        steps, scores, link = _run_cells(r, m, page)
        rows.append(
            f"| {dataset} | {r['label']} | {_lever(r)} | {_cpu(r)} {steps}{scores}| {delta} {link}"
        )
    return rows


def _mean_range(values) -> str:
    text = f"{statistics.mean(values):.1f}"
    return text + (f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else "")


def _cpu_summary(records, page):
    """Per study and test set, each model's mean AP over its runs, against its peer's mean."""
    groups = defaultdict(list)
    for r in records:
        groups[(os.path.dirname(r["_path"]), _test_metrics(r)[0], r["label"])].append(r)
    label_of = {r["_path"]: r["label"] for r in records}
    rows = [
        "| data | model | CPU | runs | AP | AP50 | AP / peer's AP |",
        "|---|---|---|---|---|---|---|",
    ]
    for (study, dataset, label), runs in sorted(groups.items()):
        ap = [_test_metrics(r)[1]["bbox/AP"] for r in runs]
        ap50 = [_test_metrics(r)[1]["bbox/AP50"] for r in runs]
        peers = {label_of[r["peer"]] for r in runs if r.get("peer") in label_of}
        ratio = ""
        if len(peers) == 1:
            peer_runs = groups[(study, dataset, peers.pop())]
            peer_ap = statistics.mean(_test_metrics(p)[1]["bbox/AP"] for p in peer_runs)
            ratio = f"{statistics.mean(ap) / peer_ap:.2f}x"
        rows.append(
            f"| {dataset} | {label} | {_cpu(runs[0])} | {len(runs)} | {_mean_range(ap)} "
            f"| {_mean_range(ap50)} | {ratio} |"
        )
    return rows


def _structure(stats, page):
    """The shipped configs' size and cost, from tools/model_stats.py --record."""
    rows = [
        "| config | params (M) | with BN statistics (M) | GFLOPs | default boxes "
        "| boxes / location | maps |",
        "|---|---|---|---|---|---|---|",
    ]
    for config_file, s in stats["configs"].items():
        maps = ", ".join(str(h) if h == w else f"{h}x{w}" for h, w in s["map_sizes"])
        gflops = "-" if s["gflops"] is None else f"{s['gflops']:.2f}"
        rows.append(
            f"| [{config_file.removeprefix('configs/')}]({_link(config_file, page)}) "
            f"| {s['params'] / 1e6:.3f} | {s['params_with_bn_stats'] / 1e6:.3f} | {gflops} "
            f"| {s['default_boxes']} | {', '.join(map(str, s['boxes_per_location']))} | {maps} |"
        )
    return rows


# Table name -> (renderer, the docs pages that show it).
TABLES = {
    "cpu_30min": (_cpu_30min, ("docs/model_zoo.md",)),
    "cpu_summary": (_cpu_summary, ("README.md",)),
    "structure": (_structure, ("docs/model_zoo.md",)),
    "val_levers": (_levers, ()),
}
# A study's page (docs/experiments/) shows one study's records of a table between
# <!-- table:NAME:STUDY --> and <!-- /table:NAME:STUDY -->, STUDY the records' results/ folder.
STUDY_PAGES = "docs/experiments"
_STUDY_TABLE = re.compile(
    r"(<!-- table:(\w+):([\w.-]+) -->\n).*?(<!-- /table:\2:\3 -->)", flags=re.DOTALL
)
# cpu_summary summarises the cpu_30min records.
_SOURCE_TABLE = {"cpu_summary": "cpu_30min"}


def load_model_stats(path: str | None = None) -> dict:
    """tools/model_stats.py's record ({"configs": {}} when there is none)."""
    path = path or MODEL_STATS
    if not os.path.isfile(path):
        return {"configs": {}}
    with open(path) as f:
        return json.load(f)


def render_docs(records=None, model_stats=None, root: str = ROOT) -> dict:
    """{page path: its text with every table rendered from ``records`` and ``model_stats``
    (default: what results/ holds)}, for the pages under ``root`` that show tables; raises if a
    page lacks a table's markers."""
    records = load_records() if records is None else records
    model_stats = load_model_stats() if model_stats is None else model_stats
    pages = {}
    for name, (render, page_paths) in TABLES.items():
        if name == "structure":
            chosen = model_stats if model_stats["configs"] else None
        else:
            member = _SOURCE_TABLE.get(name, name)
            chosen = [r for r in records if member in r["tables"]]
        for page in page_paths:
            path = os.path.join(root, page)
            if path not in pages:
                with open(path) as f:
                    pages[path] = f.read()
            pattern = re.compile(
                rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", flags=re.DOTALL
            )
            if not pattern.search(pages[path]):
                raise ValueError(
                    f"{page}: no markers '<!-- table:{name} -->' and '<!-- /table:{name} -->' "
                    "on lines of their own"
                )
            body = "\n".join(render(chosen, page)) + "\n" if chosen else ""
            pages[path] = pattern.sub(lambda m: m.group(1) + body + m.group(2), pages[path])
    for path in sorted(glob.glob(os.path.join(root, STUDY_PAGES, "*.md"))):
        with open(path) as f:
            text = f.read()
        if _STUDY_TABLE.search(text):
            page = os.path.relpath(path, root)
            pages[path] = _STUDY_TABLE.sub(lambda m: _study_table(m, records, page), text)
    return pages


def _study_table(match, records, page) -> str:
    opening, name, study, closing = match.groups()
    if name not in TABLES or name == "structure":
        raise ValueError(f"{page}: '{opening.strip()}' names no table of run records")
    member = _SOURCE_TABLE.get(name, name)
    chosen = [r for r in records if member in r["tables"] and os.path.dirname(r["_path"]) == study]
    if not chosen:
        raise ValueError(f"{page}: no records of table '{member}' in results/{study}/")
    return opening + "\n".join(TABLES[name][0](chosen, page)) + "\n" + closing
