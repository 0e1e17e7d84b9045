"""Pascal VOC evaluation with per-class AP (Detectron2's evaluator reports only the means), and
the evaluation of detectors from other libraries (the peers) by the same evaluators."""

import json
import logging
import os
import tempfile
from collections import defaultdict

from tabulate import tabulate

from detectron2.data import DatasetCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator, print_csv_format
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm

__all__ = ["PascalVOCDetectionEvaluatorWithClassAP", "evaluate_detector", "report_peer_run"]


class PascalVOCDetectionEvaluatorWithClassAP(PascalVOCDetectionEvaluator):
    """Detectron2's VOC evaluator, plus ``AP50-<class>`` and ``AP75-<class>`` for every class
    (same metric, same ``voc_eval``), logged as a table and returned beside AP, AP50 and AP75:
    AP75 per class shows which class's localisation holds the AP (0.5:0.95) down."""

    def evaluate(self):
        results = super().evaluate()
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return results
        predictions = defaultdict(list)
        for per_rank in gathered:
            for class_id, lines in per_rank.items():
                predictions[class_id].extend(lines)
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as folder:
            template = os.path.join(folder, "{}.txt")
            for class_id, name in enumerate(self._class_names):
                with open(template.format(name), "w") as f:
                    f.write("\n".join(predictions.get(class_id, [""])))
                for threshold in (50, 75):
                    _, _, ap = voc_eval(
                        template,
                        self._anno_file_template,
                        self._image_set_path,
                        name,
                        ovthresh=threshold / 100,
                        use_07_metric=self._is_2007,
                    )
                    results["bbox"][f"AP{threshold}-{name}"] = ap * 100
        bbox = results["bbox"]
        rows = [
            (name, f"{bbox[f'AP50-{name}']:.2f}", f"{bbox[f'AP75-{name}']:.2f}")
            for name in self._class_names
        ]
        table = tabulate(rows, headers=["category", "AP50", "AP75"])
        self._logger.info("Per-class AP50 and AP75:\n" + table)
        return results


def evaluate_detector(evaluator, dataset_name: str, predict, batch_size: int = 8) -> dict:
    """Runs ``evaluator`` over a registered dataset with the detections of ``predict``, a
    function from a list of dataset dicts to one ``Instances`` per dict (boxes in the image's
    pixels, ``pred_classes`` in the dataset's contiguous ids): how a detector of another library
    is scored exactly as ours are."""
    evaluator.reset()
    records = DatasetCatalog.get(dataset_name)
    for start in range(0, len(records), batch_size):
        inputs = records[start : start + batch_size]
        evaluator.process(inputs, [{"instances": found} for found in predict(inputs)])
    return evaluator.evaluate()


def report_peer_run(output_dir: str, stats: dict, results: dict, logger: logging.Logger):
    """A peer tool's ending: OUTPUT_DIR/results.json ({"peer": stats, "results": ...}) and, per
    test dataset, Detectron2's ``copypaste:`` lines, as train_net.py prints them."""
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump({"peer": stats, "results": results}, f, indent=2)
    for name, result in results.items():
        logger.info(f"Evaluation of the peer on {name}:")
        print_csv_format(result)
