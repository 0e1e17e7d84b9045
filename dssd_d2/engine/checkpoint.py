"""A checkpointer whose files survive a kill at any moment and never hold non-finite weights, and
that says exactly which weights a run starts with that were not in MODEL.WEIGHTS; and the
writer of the converted weight files (tools/convert_*.py)."""

import contextlib
import os
import pickle
from collections import defaultdict
from typing import Dict, Iterable, List, Sequence

import torch
from fvcore.common.checkpoint import get_unexpected_parameters_message

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "save_converted_weights"]


@contextlib.contextmanager
def _replace_on_success(path: str, mode: str):
    """Write to ``path + ".tmp"``, flush it to disk, then rename it over ``path`` (atomic on a
    local file system); if the write fails or the process dies, ``path`` is untouched."""
    tmp = f"{path}.tmp"
    with open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_converted_weights(tensors: Dict, path: str, author: str, exact_names: bool = True):
    """Write converted weights as a Detectron2 .pkl for MODEL.WEIGHTS. ``exact_names``: the keys
    are our parameter names (no name-matching heuristics when loading)."""
    data = {"model": {k: _to_numpy(v) for k, v in tensors.items()}, "__author__": author}
    if exact_names:
        data["matching_heuristics"] = False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f)


def _to_numpy(value):
    return value.detach().contiguous().numpy() if isinstance(value, torch.Tensor) else value


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _modules_of(keys: Iterable[str], all_keys: Sequence[str]) -> List[str]:
    """``keys`` as the fewest names: a module (``name.*``) when all its tensors are in ``keys``.
    BatchNorm's batch counters are left out: they are not weights."""
    keys = set(keys)
    all_keys = [k for k in all_keys if not k.endswith("num_batches_tracked")]
    names: List[str] = []
    for key in (k for k in all_keys if k in keys):
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if all(k in keys for k in all_keys if _under(k, [name])):
                break
        name = name if name == key else f"{name}.*"
        if name not in names:
            names.append(name)
    return names


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer for a local OUTPUT_DIR with crash-safe saves.

    fvcore's ``save`` writes ``model_XXXX.pth`` in place and then rewrites ``last_checkpoint``
    in place: a kill during either leaves a truncated file, and a truncated ``last_checkpoint``
    makes ``--resume`` fail. Here both are written to a temporary file and renamed, and
    ``last_checkpoint`` moves only once the checkpoint it names is complete, so a kill leaves the
    previous pair intact. A model with a NaN or infinite weight is not saved (FloatingPointError)
    so that the last checkpoint on disk is always one to resume from. In multi-process training
    only the main process writes (Detectron2's ``save_to_disk``), checkpoints and
    ``last_checkpoint`` alike.

    Loading reports the weights that were not read from the file and keep their initialisation
    (``new_weights``: name -> why), e.g. the decoder and some prediction modules when a DSSD
    starts from an SSD checkpoint. ``weights_exclude`` (MODEL.WEIGHTS_EXCLUDE) lists name
    prefixes that keep their initialisation when a run starts from MODEL.WEIGHTS; a resumed
    run reads every weight of its own checkpoint.
    """

    def __init__(self, model, save_dir="", *, weights_exclude: Sequence[str] = (), **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.weights_exclude = tuple(p.rstrip(".") for p in weights_exclude)
        names = list(self.model.state_dict())  # fvcore unwraps DDP into self.model
        unknown = [p for p in self.weights_exclude if not any(_under(k, [p]) for k in names)]
        if unknown:
            raise ValueError(f"MODEL.WEIGHTS_EXCLUDE has {unknown}, which name no model weight")
        self._excluding: Sequence[str] = ()
        self.new_weights: Dict[str, str] = {}

    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            return super().resume_or_load(path, resume=True)
        self._excluding = self.weights_exclude
        try:
            return super().resume_or_load(path, resume=False)
        finally:
            self._excluding = ()

    def _load_model(self, checkpoint):
        # Excluded weights are put back after loading, by model name: this works whatever the
        # file's key names (renamed by matching heuristics or the DSSD decoder's remapping).
        kept = {
            k: v.clone() for k, v in self.model.state_dict().items() if _under(k, self._excluding)
        }
        incompatible = super()._load_model(checkpoint)
        # In place, not load_state_dict: a partial load would reset every FrozenBatchNorm2d
        # that it does not cover to mean 0, variance 1 (Detectron2's loader for old files).
        state = self.model.state_dict()
        with torch.no_grad():
            for key, value in kept.items():
                state[key].copy_(value)
        shapes = {k: (c, m) for k, c, m in incompatible.incorrect_shapes}
        self.new_weights = {}
        for key in list(kept) + incompatible.missing_keys:
            if key.endswith("num_batches_tracked"):  # a BatchNorm counter, not a weight
                continue
            if key in kept:
                self.new_weights[key] = "MODEL.WEIGHTS_EXCLUDE"
            elif key in shapes:
                self.new_weights[key] = "shape {} in the file, {} in the model".format(*shapes[key])
            else:
                self.new_weights[key] = "not in the file"
        return incompatible

    def _log_incompatible_keys(self, incompatible):
        """One report of the new weights, by reason, instead of fvcore's per-key warnings."""
        if self.new_weights:
            by_reason: Dict[str, List[str]] = defaultdict(list)
            for key, reason in self.new_weights.items():
                by_reason[reason].append(key)
            all_keys = list(self.model.state_dict())
            lines = [
                f"  {reason}: {', '.join(_modules_of(keys, all_keys))}"
                for reason, keys in by_reason.items()
            ]
            self.logger.warning(
                f"{len(self.new_weights)} weights were not loaded and keep their "
                "initialisation:\n" + "\n".join(lines)
            )
        if incompatible.unexpected_keys:
            self.logger.warning(get_unexpected_parameters_message(incompatible.unexpected_keys))

    def save(self, name: str, **kwargs):
        if not self.save_dir:
            return
        # Checked in every process, though only the main one writes, so that all of them stop
        # with this message rather than the others waiting for a main process that is gone.
        for key, value in self.model.state_dict().items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"Not saving checkpoint {name}: weight {key} has NaN or infinite values "
                    f"(the last good checkpoint is {self.get_checkpoint_file() or 'none'})"
                )
        if not self.save_to_disk:  # not the main process
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with _replace_on_success(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str):
        with _replace_on_success(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)
