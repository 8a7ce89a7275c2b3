#!/usr/bin/env bash
# Run here (where pip reaches PyPI), in the repository root, before the first GPU run:
#   - copies the GPU machine's Jittor set-up (setup.sh, the CUDA 13 patch, Jittor's wheels) into .device/
#   - downloads the PyTorch side's missing wheels (diffusers and what it needs beyond the machine's
#     packages) for the machine's Python 3.12 into .whl/
# Both folders are git-ignored; the device run carries them (carry: [".device", ".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${JSTYLEID_DEVICE_SETUP:-../shared/device}
[ -f "$SHARED/setup.sh" ] || { echo "no $SHARED/setup.sh: set JSTYLEID_DEVICE_SETUP to the GPU set-up folder" >&2; exit 2; }
rm -rf .device && mkdir -p .device && cp -r "$SHARED"/. .device/ && chmod -R u+w .device
# its core compile goes where our processes look: under common/jittor_env.py's kernel cache name
name=$(sed -n 's/^CACHE_NAME = "\(.*\)"$/\1/p' common/jittor_env.py)
[ -n "$name" ] || { echo "no CACHE_NAME in common/jittor_env.py" >&2; exit 2; }
sed -i "1a export cache_name=$name" .device/setup.sh
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
du -sh .device .whl
