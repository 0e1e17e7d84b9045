"""Run records and the docs tables rendered from them (dssd_d2.run_record, dssd_d2.results)."""

import json

import pytest

from dssd_d2.engine import SSDTrainer
from dssd_d2.results import load_record, render_docs

from helpers import load_tool, register_random_dataset, tiny_ssd300_cfg


def _record(tmp_path, name, label, ap, tables=("cpu_30min",), peer=None, dataset="bccd_test"):
    """A record in a results/ tree under ``tmp_path``, as tools/add_result.py writes it."""
    record = {
        "tool": "train_net.py", "config_file": "configs/BCCD/tiny_dsod256_cpu.yaml",
        "commit": "0" * 40, "date": "2026-12-08T01:00:00Z",
        "cpu": {"model": "Intel(R) Xeon(R) Processor", "flags": ["avx2", "amx_bf16"], "cores": 2},
        "threads": 1, "datasets": {"train": ["bccd_trainval"], "test": [dataset]},
        "iterations": 100, "batch_size": 4, "training_minutes": 30.0, "label": label,
        "tables": list(tables),
        "metrics": {dataset: {"bbox/AP": ap, "bbox/AP50": ap + 30, "bbox/AP75": ap - 5,
                              "bbox/AP50-RBC": 80.0, "bbox/AP50-WBC": 90.0}},
    }  # fmt: skip
    if peer:
        record["peer"] = peer
    path = tmp_path / "results" / "study" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def _pages(tmp_path):
    (tmp_path / "docs").mkdir(exist_ok=True)
    for page, tables in [("README.md", ["cpu_summary"]), ("docs/model_zoo.md", ["cpu_30min", "structure"])]:
        text = "".join(f"<!-- table:{t} -->\nold\n<!-- /table:{t} -->\n" for t in tables)
        (tmp_path / page).write_text(f"intro\n{text}end\n")


def test_tables_are_rendered_between_markers_with_ratios_against_the_peer(tmp_path, monkeypatch):
    import dssd_d2.results as results

    monkeypatch.setattr(results, "RESULTS_DIR", str(tmp_path / "results"))
    _pages(tmp_path)
    _record(tmp_path, "yolo_1", "YOLO11n", 50.0)
    _record(tmp_path, "yolo_2", "YOLO11n", 40.0)
    _record(tmp_path, "ours_1", "Tiny-DSOD256", 60.0, peer="study/yolo_1.json")
    _record(tmp_path, "ours_2", "Tiny-DSOD256", 50.0, peer="study/yolo_2.json")
    _record(tmp_path, "other", "Elsewhere", 1.0, tables=())
    pages = render_docs(results.load_records(), {"configs": {}}, root=str(tmp_path))
    zoo = pages[str(tmp_path / "docs" / "model_zoo.md")]
    assert zoo.startswith("intro\n<!-- table:cpu_30min -->\n| data |")
    assert zoo.endswith("<!-- table:structure -->\n<!-- /table:structure -->\nend\n")
    rows = [line for line in zoo.splitlines() if line.startswith("| bccd_test")]
    assert len(rows) == 4 and not any("Elsewhere" in r for r in rows)
    ours_1 = next(r for r in rows if "ours_1.json" in r)
    assert "| 60.0 | 90.0 | 55.0 | RBC 80.0, WBC 90.0 | 1.20x |" in ours_1
    assert "Xeon AMX" in ours_1 and "100 x 4" in ours_1
    assert "(../configs/BCCD/tiny_dsod256_cpu.yaml)" in ours_1
    summary = pages[str(tmp_path / "README.md")]
    assert "| bccd_test | Tiny-DSOD256 | Xeon AMX | 2 | 55.0 (50.0-60.0) | 85.0 (80.0-90.0) | 1.22x |" in summary
    assert "| bccd_test | YOLO11n | Xeon AMX | 2 | 45.0 (40.0-50.0) |" in summary


def test_a_study_page_shows_only_its_study_and_levers_against_their_baseline(tmp_path, monkeypatch):
    import dssd_d2.results as results

    monkeypatch.setattr(results, "RESULTS_DIR", str(tmp_path / "results"))
    _pages(tmp_path)
    base = _record(tmp_path, "base", "baseline", 50.0, tables=("val_levers",), dataset="bccd_val")
    lever = _record(tmp_path, "ema", "EMA", 51.5, ("val_levers",), "study/base.json", "bccd_val")
    record = json.loads(lever.read_text())
    record["overrides"] = ["DATASETS.TEST", '("bccd_val",)', "MODEL.EMA.ENABLED", "True"]
    lever.write_text(json.dumps(record))
    other = tmp_path / "results" / "other" / "x.json"
    other.parent.mkdir()
    other.write_text(base.read_text())
    study = tmp_path / "docs" / "experiments" / "study.md"
    study.parent.mkdir()
    study.write_text("<!-- table:val_levers:study -->\nold\n<!-- /table:val_levers:study -->\n")
    pages = render_docs(results.load_records(), {"configs": {}}, root=str(tmp_path))
    rows = [line for line in pages[str(study)].splitlines() if line.startswith("| bccd_val")]
    assert len(rows) == 2 and not any("x.json" in r for r in rows)
    assert rows[0].startswith("| bccd_val | baseline | (the config) |")
    assert "| EMA | `MODEL.EMA.ENABLED True` |" in rows[1] and "| +1.5 |" in rows[1]
    study.write_text("<!-- table:structure:study -->\n<!-- /table:structure:study -->\n")
    with pytest.raises(ValueError, match="study.md: '<!-- table:structure:study -->' names no"):
        render_docs(results.load_records(), {"configs": {}}, root=str(tmp_path))


@pytest.mark.slow
def test_a_page_without_the_markers_and_a_bad_record_are_named(tmp_path, monkeypatch):
    import dssd_d2.results as results

    monkeypatch.setattr(results, "RESULTS_DIR", str(tmp_path / "results"))
    _pages(tmp_path)
    (tmp_path / "README.md").write_text("no markers\n")
    _record(tmp_path, "ours", "Tiny-DSOD256", 60.0)
    with pytest.raises(ValueError, match=r"README.md: no markers '<!-- table:cpu_summary -->'"):
        render_docs(results.load_records(), {"configs": {}}, root=str(tmp_path))
    broken = tmp_path / "results" / "study" / "broken.json"
    broken.write_text(json.dumps({"tool": "train_net.py"}))
    with pytest.raises(ValueError, match=r"broken.json: run record without \['config_file'"):
        load_record(str(broken))


@pytest.mark.slow
def test_a_finished_run_writes_its_record_and_add_result_keeps_it(tmp_path, monkeypatch):
    name = register_random_dataset("record_random", tmp_path, num_images=2)
    cfg = tiny_ssd300_cfg()
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (name,)
    cfg.SOLVER.MAX_ITER = 2
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    trainer = SSDTrainer(cfg)
    trainer.register_hooks([trainer.run_record_hook("configs/x.yaml", ["SOLVER.MAX_ITER", "2"])])
    trainer.train()
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["iterations"] == 2 and record["overrides"] == ["SOLVER.MAX_ITER", "2"]
    assert record["config_file"] == "configs/x.yaml" and record["threads"] >= 1
    assert set(record["metrics"]) == {name} and "bbox/AP" in record["metrics"][name]
    assert record["settings"]["precision"] == "float32" and record["cpu"]["cores"] >= 1

    import dssd_d2.results as results

    monkeypatch.setattr(results, "RESULTS_DIR", str(tmp_path / "results"))
    tool = load_tool("add_result")
    monkeypatch.setattr(tool, "RESULTS_DIR", str(tmp_path / "results"))
    destination = tmp_path / "results" / "s" / "tiny.json"
    tool.main([str(tmp_path / "run"), str(destination), "--table", "cpu_30min", "--label", "Tiny"])
    kept = load_record(str(destination))
    assert kept["label"] == "Tiny" and kept["tables"] == ["cpu_30min"]
    with pytest.raises(SystemExit):  # not under results/
        tool.main([str(tmp_path / "run"), str(tmp_path / "elsewhere.json")])
