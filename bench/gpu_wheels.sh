#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh needs on the GPU machine into .whl/ (gitignored).
#
# That machine has Python 3.12 with torch, torchvision, numpy, pillow, matplotlib, pyyaml, tqdm
# and safetensors preinstalled and no network; of mrcnn's imports only pycocotools is missing.
# torch / torchvision are never downloaded (theirs match its CUDA driver). Run here, then pass
# `carry: [".whl"]` to the device tool's `run` (docs/gpu.md).
#
#     bash bench/gpu_wheels.sh            # -> .whl/pycocotools-*-cp312-*manylinux*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
# name==version of each wheel: pinned so a rerun carries the same files.
WHEELS=("pycocotools==2.0.11")

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
for w in "${WHEELS[@]}"; do
  name=${w%%==*}
  n=$(ls "$DEST"/"${name}"-*.whl 2>/dev/null | wc -l)
  if [ "$n" -ne 1 ]; then
    echo "gpu_wheels: expected one ${name} wheel in $DEST, found $n (delete $DEST and rerun)" >&2
    exit 1
  fi
done
du -ch "$DEST"/*.whl | tail -n 1
ls "$DEST"
