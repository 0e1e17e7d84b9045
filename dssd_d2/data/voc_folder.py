"""A folder in the Pascal VOC 2007 layout as Detectron2 datasets, so that a user trains on their
own data from the command line (DATASETS.VOC_FOLDER) instead of writing a registration in Python.

The layout Detectron2's VOC loader and evaluator read::

    root/Annotations/<id>.xml       one VOC XML per image (<size>, <object><name>, <bndbox>)
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<split>.txt one image id per line, one file per split (train, test, ...)
"""

import functools
import logging
import os
from xml.etree import ElementTree as ET

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

__all__ = [
    "load_voc_folder_instances",
    "register_voc_folder",
    "register_voc_split",
    "voc_splits",
]

logger = logging.getLogger(__name__)

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def _split_file(root: str, split: str) -> str:
    return os.path.join(root, "ImageSets", "Main", f"{split}.txt")


def _fields_per_line(path: str) -> list[list[str]]:
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def voc_splits(root: str) -> list[str]:
    """The splits of ``root``: its ``ImageSets/Main/<split>.txt`` files of one id per line,
    sorted. VOC's per-class files (``<class>_<split>.txt``: an id and a 1 / -1 flag per line)
    are not splits and are left out. Raises, naming the path, when there are none."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"VOC folder {root} does not exist or is not a folder")
    folder = os.path.join(root, "ImageSets", "Main")
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    splits = [f[: -len(".txt")] for f in files if f.endswith(".txt")]
    splits = [s for s in splits if all(len(f) == 1 for f in _fields_per_line(_split_file(root, s)))]
    if not splits:
        raise FileNotFoundError(
            f"{folder} has no split file (<split>.txt, one image id per line): a Pascal VOC "
            "folder needs ImageSets/Main/, Annotations/ and JPEGImages/"
        )
    return splits


def _parse_annotation(path: str) -> ET.ElementTree:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: annotation file is missing")
    try:
        return ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path}: not a readable VOC annotation (XML error: {e})") from e


def _object_names(path: str) -> list[str]:
    """Class names of the objects in one annotation file; raises, naming the file, when it is
    missing, does not parse or lacks what Detectron2's VOC loader reads."""
    tree = _parse_annotation(path)
    if not all(_is_number(tree.findtext(f"./size/{key}")) for key in ("width", "height")):
        raise ValueError(f"{path}: VOC annotation without a numeric <size><width> and <height>")
    names = []
    for obj in tree.findall("object"):
        name = obj.findtext("name")
        box = obj.find("bndbox")
        if not name or box is None or not all(_is_number(box.findtext(k)) for k in _CORNERS):
            raise ValueError(f"{path}: an <object> without <name> or numeric <bndbox> {_CORNERS}")
        names.append(name)
    return names


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _check_split(root: str, split: str, class_names) -> set:
    """The class names in the annotations of one split, after checking what would otherwise fail
    later and less clearly: missing annotation or image files, annotations that do not parse,
    objects of a class outside ``class_names`` (when given), a split of a single image."""
    path = _split_file(root, split)
    ids = [line[0] for line in _fields_per_line(path)]
    if len(ids) == 1:  # np.loadtxt in Detectron2's loader makes one id a 0-d array
        raise ValueError(f"{path}: Detectron2's VOC loader needs at least two images per split")
    found = set()
    for fileid in ids:
        annotation = os.path.join(root, "Annotations", f"{fileid}.xml")
        image = os.path.join(root, "JPEGImages", f"{fileid}.jpg")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{image}: image of {path} is missing (VOC images are .jpg)")
        names = _object_names(annotation)
        unknown = sorted(set(names) - set(class_names or names))
        if unknown:
            raise ValueError(
                f"{annotation}: class(es) {unknown} are not among the class names given "
                f"(DATASETS.VOC_CLASSES) {list(class_names)}"
            )
        found.update(names)
    return found


def load_voc_folder_instances(root: str, split: str, class_names):
    """Detectron2's VOC loader, without zero-extent boxes.

    An object annotated as a point or a line (xmin == xmax or ymin == ymax; BCCD has two) would
    become a 1-pixel box, since the loader reads inclusive pixel indices; it is an annotation
    error, dropped here with a warning naming the file.
    """
    dicts = load_voc_instances(root, split, list(class_names))
    for record in dicts:
        annotations = record["annotations"]
        kept = [
            a
            for a in annotations
            if min(a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]) > 1
        ]
        if len(kept) < len(annotations):
            dropped = [a["bbox"] for a in annotations if a not in kept]
            logger.warning(f"{record['file_name']}: dropping zero-extent box(es) {dropped}")
        record["annotations"] = kept
    return dicts


def _registered_from(name: str, root: str) -> bool:
    """Whether ``name`` is registered from the folder ``root``."""
    if name not in DatasetCatalog.list():
        return False
    dirname = MetadataCatalog.get(name).get("dirname", None)
    return dirname is not None and os.path.realpath(dirname) == os.path.realpath(root)


def register_voc_split(name: str, root: str, split: str, class_names):
    """Register ``split`` of the VOC folder ``root`` as ``name``, loaded by
    :func:`load_voc_folder_instances`, with the metadata Detectron2's Pascal VOC evaluator reads
    (VOC 2007 11-point metric).

    Registering the same name again from the same folder and classes does nothing (each process
    of a multi-process run registers its datasets); from another folder or with other classes
    it raises, rather than silently train on the first one.
    """
    class_names = list(class_names)
    if name in DatasetCatalog.list():
        metadata = MetadataCatalog.get(name)
        if _registered_from(name, root) and metadata.get("thing_classes", None) == class_names:
            return
        raise ValueError(
            f"dataset {name!r} is already registered (from {metadata.get('dirname', None)}, "
            f"classes {metadata.get('thing_classes', None)}); cannot register it from {root} "
            f"with classes {class_names}"
        )
    DatasetCatalog.register(
        name, functools.partial(load_voc_folder_instances, root, split, class_names)
    )
    MetadataCatalog.get(name).set(
        thing_classes=class_names, dirname=root, split=split, year=2007, evaluator_type="pascal_voc"
    )


def register_voc_folder(root: str, prefix: str = "custom", class_names=None) -> list[str]:
    """Register ``{prefix}_{split}`` for every ``ImageSets/Main/<split>.txt`` of the Pascal VOC
    2007-layout folder ``root``; returns the dataset names.

    ``class_names``: the classes, in the order of their ids; by default the sorted unique
    ``<object><name>`` found in the folder's annotations (so ids follow alphabetical order).
    Every split's annotations are read once here, so that a missing folder, split file,
    annotation or image, an annotation that does not parse or an object of an unknown class
    raises now, naming the path, rather than during training. Evaluation uses Detectron2's Pascal
    VOC evaluator (11-point VOC 2007 metric) through ``evaluator_type`` "pascal_voc".
    """
    splits = voc_splits(root)
    names = [f"{prefix}_{split}" for split in splits]
    if all(_registered_from(name, root) for name in names):  # again: no need to read it all
        class_names = class_names or MetadataCatalog.get(names[0]).thing_classes
    else:
        found = set().union(*(_check_split(root, split, class_names) for split in splits))
        class_names = class_names or sorted(found)
    for name, split in zip(names, splits):
        register_voc_split(name, root, split, class_names)
    return names
