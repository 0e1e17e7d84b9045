"""The docs tell the truth: links, config paths, tools, config keys and dataset names they name
exist, the README's commands start, and every results table equals what results/ records give."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from detectron2.data import DatasetCatalog

from dssd_d2.results import load_records, render_docs

from helpers import ROOT, make_cfg

PAGES = sorted(
    [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "datasets", "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
)
# Datasets a page may name that exist only once a user registers them.
USER_DATASET = re.compile(r"^(custom|my|your)_")


def _text(page):
    with open(page) as f:
        return f.read()


def _names(pattern):
    """(page, match) for every match of ``pattern`` in every page."""
    return [(page, m) for page in PAGES for m in sorted(set(re.findall(pattern, _text(page))))]


def _rel(page):
    return os.path.relpath(page, ROOT)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_links_resolve(page):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        if not os.path.exists(path):
            missing.append(target)
    assert not missing, f"{_rel(page)} links to missing files: {missing}"


def test_named_config_files_and_tools_exist():
    missing = [
        f"{_rel(page)}: {path}"
        for page, path in _names(r"\b((?:configs|tools)/[\w./-]+\.(?:yaml|py|sh))\b")
        if not os.path.exists(os.path.join(ROOT, path))
    ]
    assert not missing, missing


def test_named_config_keys_exist():
    cfg = make_cfg()
    missing = []
    pattern = r"\b((?:MODEL|SOLVER|INPUT|DATASETS|DATALOADER|TEST)(?:\.[A-Z0-9_]+)+)\b"
    for page, key in _names(pattern):
        node = cfg
        for part in key.split("."):
            if not hasattr(node, part):
                missing.append(f"{_rel(page)}: {key}")
                break
            node = getattr(node, part)
    assert not missing, missing


def test_named_datasets_are_registered():
    registered = set(DatasetCatalog.list())
    pattern = r"`((?:bccd|microcontrollers|digits|small_digits|voc_\d+|coco_\d+)_\w+)`"
    missing = [
        f"{_rel(page)}: {name}"
        for page, name in _names(pattern)
        if name not in registered and not USER_DATASET.match(name)
    ]
    assert not missing, missing


def test_results_tables_equal_the_records():
    """tools/make_tables.py --check: no table in the docs differs from results/."""
    stale = [
        _rel(path) for path, text in render_docs(load_records()).items() if _text(path) != text
    ]
    assert not stale, f"stale tables in {stale}: run tools/make_tables.py"


def test_readme_is_a_short_front_door():
    text = _text(os.path.join(ROOT, "README.md"))
    assert len(text.splitlines()) <= 200
    # Dated run narratives and first-person notes belong in docs/experiments/.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)
    assert not re.search(r"\b(I|I'm|I've|my|we tried)\b", text)


def _readme_scripts():
    """The Python scripts the README's shell commands run."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", _text(os.path.join(ROOT, "README.md")), re.S)
    return sorted(set(re.findall(r"\b((?:tools/)?\w+\.py)\b", "\n".join(blocks))))


@pytest.mark.slow
@pytest.mark.parametrize("script", _readme_scripts())
def test_readme_commands_start(script):
    """Each script a README command runs answers --help (the commands that train run elsewhere
    in the suite)."""
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()


@pytest.mark.parametrize(
    "config_file",
    ["configs/PascalVOC-Detection/ssd300_vgg16.yaml", "configs/BCCD/tiny_dsod256_cpu.yaml"],
)
def test_structure_table_record_matches_the_code(config_file):
    """The model zoo's structure table comes from results/model_stats.json: the parameters and
    default boxes it holds are what the code builds today."""
    from dssd_d2.analysis import model_stats
    from dssd_d2.results import load_model_stats

    recorded = load_model_stats()["configs"].get(config_file)
    if recorded is None:
        pytest.fail(f"{config_file} missing in results/model_stats.json (tools/model_stats.py --record)")
    cfg = make_cfg(os.path.join(ROOT, config_file))
    current = model_stats(cfg, flops=False)
    for key in ("params", "params_with_bn_stats", "default_boxes", "boxes_per_location"):
        assert json.loads(json.dumps(current[key])) == recorded[key], key
