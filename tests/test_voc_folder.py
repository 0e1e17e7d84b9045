"""A user's own Pascal VOC folder through DATASETS.VOC_FOLDER (dssd_d2/data/voc_folder.py): the
datasets it registers, the recommended config on it end to end, and clear errors on bad folders.
Real-data tests skip without $DETECTRON2_DATASETS."""

import os
import re

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

from dssd_d2.data import register_voc_folder
from dssd_d2.engine import SSDTrainer, build_evaluator
from dssd_d2.evaluation import PascalVOCDetectionEvaluatorWithClassAP

from helpers import ROOT, make_cfg, write_voc_dataset

CUSTOM = "custom/tiny_dsod256_cpu.yaml"


@pytest.fixture(autouse=True)
def unregister_custom():
    """Every test registers its own folder as custom_<split>: forget them afterwards."""
    yield
    for name in DatasetCatalog.list():
        if name.startswith(("custom_", "voc_test_")):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def microcontrollers_subset(datasets_root, tmp_path):
    """microcontrollers with 8 trainval and 4 test photos: its Annotations/ and JPEGImages/
    linked, its split files cut."""
    source = os.path.join(datasets_root, "microcontrollers")
    if not os.path.isdir(source):
        pytest.skip(f"microcontrollers not found at {source}")
    os.makedirs(tmp_path / "ImageSets" / "Main")
    for folder in ("Annotations", "JPEGImages"):
        os.symlink(os.path.join(source, folder), tmp_path / folder)
    for split, count in (("trainval", 8), ("test", 4)):
        with open(os.path.join(source, "ImageSets", "Main", f"{split}.txt")) as f:
            ids = f.read().split()[:count]
        (tmp_path / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return str(tmp_path)


def custom_cfg(folder, *opts):
    return make_cfg(CUSTOM, ["DATASETS.VOC_FOLDER", folder, *opts])


def test_bccd_through_the_key(bccd_root):
    cfg = custom_cfg(bccd_root, "MODEL.SSD.NUM_CLASSES", "3")
    sizes = {
        split: len(DatasetCatalog.get(f"custom_{split}")) for split in ("train", "val", "test")
    }
    assert sizes == {"train": 205, "val": 87, "test": 72}
    assert len(DatasetCatalog.get("custom_trainval")) == 292
    meta = MetadataCatalog.get("custom_test")
    assert meta.thing_classes == ["Platelets", "RBC", "WBC"]  # sorted: ids in that order
    assert (meta.dirname, meta.split, meta.year) == (bccd_root, "test", 2007)
    assert isinstance(build_evaluator(cfg, "custom_test"), PascalVOCDetectionEvaluatorWithClassAP)
    # the two point annotations are dropped, as for bccd_trainval
    boxes = sum(len(d["annotations"]) for d in DatasetCatalog.get("custom_trainval"))
    assert boxes == sum(len(d["annotations"]) for d in DatasetCatalog.get("bccd_trainval"))


def test_microcontrollers_classes_and_counts(datasets_root):
    root = os.path.join(datasets_root, "microcontrollers")
    if not os.path.isdir(root):
        pytest.skip(f"microcontrollers not found at {root}")
    custom_cfg(root, "MODEL.SSD.NUM_CLASSES", "4")
    assert {n for n in DatasetCatalog.list() if n.startswith("custom_")} == {
        "custom_trainval",
        "custom_test",
    }
    trainval, test = DatasetCatalog.get("custom_trainval"), DatasetCatalog.get("custom_test")
    assert (len(trainval), len(test)) == (114, 35)
    assert sum(len(d["annotations"]) for d in trainval + test) == 177
    classes = ["Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora", "Raspberry_Pi_3"]
    assert MetadataCatalog.get("custom_trainval").thing_classes == classes


@pytest.mark.slow
def test_train_net_trains_and_evaluates_the_custom_config(
    microcontrollers_subset, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(ROOT)
    import train_net

    args = default_argument_parser().parse_args(
        [
            "--config-file",
            os.path.join(ROOT, "configs", CUSTOM),
            "DATASETS.VOC_FOLDER",
            microcontrollers_subset,
            "MODEL.SSD.NUM_CLASSES",
            "4",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.WARMUP_ITERS",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    results = train_net.main(args)["bbox"]
    assert {"AP", "AP50", "AP75", "AP50-Arduino_Nano", "AP50-Raspberry_Pi_3"} <= set(results)
    assert all(np.isfinite(v) for v in results.values())
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")


def test_wrong_num_classes_is_a_clear_error(microcontrollers_subset):
    cfg = custom_cfg(microcontrollers_subset, "MODEL.SSD.NUM_CLASSES", "3")
    with pytest.raises(ValueError, match=r"MODEL.SSD.NUM_CLASSES is 3 .* has 4 classes"):
        SSDTrainer.build_train_loader(cfg)


def test_registering_again_same_folder_is_a_no_op_other_folder_an_error(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        write_voc_dataset(folder, ["cat", "bus"], split="trainval")
    assert register_voc_folder(str(first), "voc_test") == ["voc_test_trainval"]
    assert register_voc_folder(str(first) + "/", "voc_test") == ["voc_test_trainval"]
    with pytest.raises(ValueError, match=f"already registered .*{second}"):
        register_voc_folder(str(second), "voc_test")


def test_class_names_given_or_sorted_from_the_annotations(tmp_path):
    write_voc_dataset(tmp_path, ["cat", "bus", "ant"], split="trainval")
    # VOC's per-class image sets (an id and a flag per line) are not splits
    (tmp_path / "ImageSets" / "Main" / "cat_trainval.txt").write_text("000000  1\n000001 -1\n")
    assert register_voc_folder(str(tmp_path), "voc_test") == ["voc_test_trainval"]
    assert MetadataCatalog.get("voc_test_trainval").thing_classes == ["ant", "bus", "cat"]
    register_voc_folder(str(tmp_path), "voc_test_given", ["cat", "bus", "ant", "dog"])
    dicts = DatasetCatalog.get("voc_test_given_trainval")
    assert MetadataCatalog.get("voc_test_given_trainval").thing_classes[3] == "dog"
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0, 1, 2}


def test_missing_folder_and_split_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        register_voc_folder(str(tmp_path / "nothing"), "voc_test")
    write_voc_dataset(tmp_path, ["cat"], split="trainval")
    os.remove(tmp_path / "ImageSets" / "Main" / "trainval.txt")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ImageSets" / "Main")):
        register_voc_folder(str(tmp_path), "voc_test")


def test_bad_annotations_name_the_file(tmp_path):
    write_voc_dataset(tmp_path, ["cat", "bus"], split="trainval")
    bad = tmp_path / "Annotations" / "000002.xml"
    bad.write_text("<annotation><size><width>80</width>")  # truncated
    with pytest.raises(ValueError, match=f"{bad}: not a readable VOC annotation"):
        register_voc_folder(str(tmp_path), "voc_test")
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match=f"{bad}: annotation file is missing"):
        register_voc_folder(str(tmp_path), "voc_test")
    write_voc_dataset(tmp_path, ["cat", "bus"], split="trainval")
    with pytest.raises(ValueError, match=r"\d{6}\.xml: class\(es\) \['bus'\] are not among"):
        register_voc_folder(str(tmp_path), "voc_test", class_names=["cat"])
    text = (tmp_path / "Annotations" / "000001.xml").read_text()
    text = re.sub("<xmin>[^<]*</xmin>", "<xmin>left</xmin>", text, count=1)
    (tmp_path / "Annotations" / "000001.xml").write_text(text)
    with pytest.raises(ValueError, match=r"000001.xml: an <object> without <name> or numeric"):
        register_voc_folder(str(tmp_path), "voc_test")
    os.remove(tmp_path / "JPEGImages" / "000000.jpg")
    with pytest.raises(FileNotFoundError, match=r"000000.jpg: image of .*trainval.txt is missing"):
        register_voc_folder(str(tmp_path), "voc_test")
    assert not [n for n in DatasetCatalog.list() if n.startswith("voc_test")]
