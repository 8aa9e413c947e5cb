#!/usr/bin/env bash
# Build what a GPU machine without ffcv or DALI needs, for its Python (default 3.12), here.
#
#   bash tools/device_kit.sh [PYTHON] [SAMPLE_JPEG_DIR]
#
# Writes device_kit/core/ (git-ignored), which travels with the working tree in one `device`
# call (at most ~55 MiB, checked below): the ffcv wheel, loaders/_jpeg for that Python, the
# shared libraries both link that a bare machine lacks (OpenCV, libjpeg-turbo, ...), and the
# sample packed at --max-side 320 (the 224-px crops of the benchmark). DALI (424 MB of wheels)
# does not travel in one call and is not built: the GPU check reports its loader skipped.
# benchmarks/GPU_SESSION.md says how to carry it and run tools/gpu_check.sh.
# SAMPLE_JPEG_DIR (default data/imagenet-sample): any folder of ImageNet JPEGs at their original
# sizes, e.g. the first 1,000 files of ImageNet-2012 val (flat or in class folders) copied flat:
#   mkdir -p data/imagenet-sample && find IMAGENET/val -name 'ILSVRC2012_val_*.JPEG' -printf '%f\t%p\n' |
#       sort | head -n 1000 | cut -f2 | xargs -d '\n' cp -t data/imagenet-sample
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.12}
SAMPLE=${2:-data/imagenet-sample}
KIT=device_kit
MAX_MIB=55  # + the working tree (~3 MB) stays under the 64 MiB a call carries

"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' || {
    echo "device_kit: $PY is not a usable Python (with pyenv: PYENV_VERSION=3.12.1 $0 python3.12)" >&2; exit 1; }
bash tools/install_system_deps.sh
rm -rf "$KIT.tmp" && mkdir -p "$KIT.tmp/core/wheels" "$KIT.tmp/core/lib" "$KIT.tmp/core/loaders"
cp tools/device_env.sh "$KIT.tmp/core/"

# ffcv builds against numpy's headers and links OpenCV / libjpeg-turbo through pkg-config
"$PY" -m pip wheel -q --no-deps -w "$KIT.tmp/core/wheels" "ffcv==1.0.2"
# the region decoder, compiled for that Python: built as part of a fastvip wheel (pip brings
# the build tools), of which only the extension travels (the device runs the working tree)
"$PY" -m pip wheel -q --no-deps -w "$KIT.tmp/build" .
unzip -q -j -d "$KIT.tmp/core/loaders" "$KIT.tmp"/build/fastvip-*.whl 'fastvip/loaders/_jpeg.*.so'

# shared libraries the two extensions need beyond glibc / libstdc++ (a CUDA image has those)
mkdir -p "$KIT.tmp/unpacked" && (cd "$KIT.tmp/unpacked" && unzip -q ../core/wheels/ffcv-*.whl)
for so in "$KIT.tmp"/unpacked/ffcv/_libffcv*.so "$KIT.tmp"/core/loaders/_jpeg.*.so; do
    ldd "$so" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
    case "$name" in
        libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++.so*|libgcc_s.so*|ld-linux*) ;;
        *) cp -L "$path" "$KIT.tmp/core/lib/$name" ;;
    esac
done

if [ -d "$SAMPLE" ]; then
    # the e2e benchmark trains on it, so it needs labels: flat files are dealt over 10 class folders
    src="$SAMPLE"
    if ! find "$SAMPLE" -mindepth 1 -maxdepth 1 -type d | grep -q .; then
        src="$KIT.tmp/sample_view"
        i=0
        find "$SAMPLE" -maxdepth 1 -type f | sort | while read -r f; do
            mkdir -p "$src/class_$((i % 10))"
            ln -s "$(realpath "$f")" "$src/class_$((i % 10))/$(basename "$f")"
            i=$((i + 1))
        done
    fi
    .venv/bin/fastvip pack "$src" "$KIT.tmp/core/sample.beton" --max-side 320 --quiet
else
    echo "device_kit: no $SAMPLE; core/ has no sample.beton (pack one on the device)" >&2
fi

rm -rf "$KIT.tmp/unpacked" "$KIT.tmp/build" "$KIT.tmp/sample_view"
size=$(du -sm "$KIT.tmp/core" | cut -f1)
if [ "$size" -gt "$MAX_MIB" ]; then
    echo "device_kit: core/ is ${size} MiB, over the ${MAX_MIB} MiB one call can carry beside the tree" >&2
    exit 1
fi
rm -rf "$KIT" && mv "$KIT.tmp" "$KIT"
du -sh "$KIT"/core "$KIT"/core/*
