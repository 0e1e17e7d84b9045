"""SSD, DSSD and DSOD for Detectron2. Importing this package registers every part."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without Detectron2
    raise ImportError(
        "dssd_d2 needs Detectron2, which is not installed in this Python environment. "
        "Run `make install` in the dssd_d2 checkout (it installs Detectron2 into .venv/), or "
        "install it yourself: pip install 'git+https://github.com/facebookresearch/detectron2.git'"
    ) from e

from .config import add_ssd_config, get_ssd_cfg
from . import data, modeling  # noqa: F401  (registration)

from .deploy import fold_batch_norm

__all__ = ["add_ssd_config", "fold_batch_norm", "get_ssd_cfg"]
