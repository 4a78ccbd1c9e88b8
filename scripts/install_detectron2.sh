#!/usr/bin/env bash
# Installs detectron2's pure-Python tree into a virtual environment.
#
# detectron2 is not on the package index. Its upstream tree is repackaged as the
# `sal-detectron2` wheel, tagged for CPython 3.10 only; the Python code runs unchanged on
# 3.11+, and its compiled `_C` extension is not needed (Faster R-CNN and RetinaNet use
# torchvision's nms and roi_align). So: unpack the wheel into a folder inside the venv and
# put that folder on the path with a .pth file. Users with a source checkout of detectron2
# can `pip install -e` it instead; nothing here depends on where it came from.
set -euo pipefail
venv=${1:-.venv}
py="$venv/bin/python"
target="$venv/detectron2-tree"
if "$py" -c "import detectron2.modeling" 2>/dev/null; then
  exit 0
fi
"$py" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 \
  --target "$target" sal-detectron2==0.7.2
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
realpath "$target" > "$site/detectron2_tree.pth"
"$py" -c "import detectron2.modeling" && echo "detectron2 installed into $target"
