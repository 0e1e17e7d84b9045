"""Pascal VOC evaluation with per-class AP (Detectron2's evaluator reports only the means)."""

import os
import tempfile
from collections import defaultdict

from tabulate import tabulate

from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm

__all__ = ["PascalVOCDetectionEvaluatorWithClassAP"]


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
