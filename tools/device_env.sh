# Source on the GPU machine, in the repository root, after carrying device_kit/core
# (built here by tools/device_kit.sh):   . device_kit/core/device_env.sh
#
# Installs ffcv under /tmp/site, puts the carried shared libraries first on LD_LIBRARY_PATH and the
# region decoder built for this Python beside its source. Nothing is written outside /tmp
# and the working tree.
_kit="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_root="$(cd "$_kit/../.." && pwd)"
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$_kit"/wheels/*.whl
cp "$_kit"/loaders/_jpeg.*.so "$_root/loaders/"
# the working tree runs uninstalled: give it the installed layout (loaders/ is fastvip.loaders)
ln -sfn ../loaders "$_root/fastvip/loaders"
export PYTHONPATH="/tmp/site:$_root${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$_kit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set +e
python3 -c 'import ffcv, fastvip.loaders.jpeg; print("device_env: ffcv", ffcv.__version__, "and the region decoder import")'
