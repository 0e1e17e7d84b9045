"""A checkpointer whose files survive a kill at any moment and never hold non-finite weights."""

import contextlib
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer"]


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
    """

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
