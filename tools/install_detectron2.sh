#!/usr/bin/env bash
# Install Detectron2 into the Python environment given as $1 unless one is already importable.
#
# Upstream Detectron2 is not on PyPI and has no wheel for Python 3.11. PyPI's sal-detectron2 0.7.2
# is upstream commit a59f0563 as a CPython 3.10 wheel; its Python code runs unchanged on 3.11
# (only the compiled rotated-box / deformable-conv ops are missing, which SSD models never use).
# We unpack that wheel into site-packages, without its top-level `tools/` package, which would
# shadow ours, and install the runtime dependencies of that Detectron2 commit.
set -euo pipefail
PY=${1:?usage: install_detectron2.sh PYTHON}

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "Detectron2 already installed: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
  exit 0
fi

"$PY" -m pip install -q \
  'numpy<2' 'setuptools<81' 'fvcore>=0.1.5,<0.1.6' 'iopath>=0.1.7,<0.1.10' 'omegaconf>=2.1,<2.4' \
  'hydra-core>=1.1' pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard matplotlib \
  Pillow black packaging opencv-python-headless

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
  --target "$tmp" sal-detectron2==0.7.2
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp -r "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$site/"
# The compiled _C is built for CPython 3.10 and cannot load here; drop it so imports fail cleanly.
rm -f "$site"/detectron2/_C*.so
"$PY" -c "import detectron2; print('Detectron2', detectron2.__version__, 'installed (pure Python)')"
