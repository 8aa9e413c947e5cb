#!/usr/bin/env bash
# Build what a GPU machine without ffcv or DALI needs, for its Python (default 3.12), here.
#
#   bash tools/device_kit.sh [PYTHON] [SAMPLE_JPEG_DIR]
#
# Writes device_kit/ (git-ignored), in pieces that each fit one `device` call's carry:
#   device_kit/core/   ffcv wheel, loaders/_jpeg for that Python, the shared libraries both
#                      link that a bare machine lacks (OpenCV, libjpeg-turbo, ...), and the
#                      sample packed at --max-side 320 (the 224-px crops of the benchmark)
#   device_kit/dali_N/ DALI and its missing dependencies as wheels: one tar cut into parts of
#                      at most 56 MiB (DALI=... picks another build, e.g. for CUDA 13)
# benchmarks/GPU_SESSION.md says how to carry and install them.
# SAMPLE_JPEG_DIR (default data/imagenet-sample): any folder of ImageNet JPEGs at their original
# sizes, e.g. the first 1,000 files of ImageNet-2012 val (flat or in class folders) copied flat:
#   mkdir -p data/imagenet-sample && find IMAGENET/val -name 'ILSVRC2012_val_*.JPEG' -printf '%f\t%p\n' |
#       sort | head -n 1000 | cut -f2 | xargs -d '\n' cp -t data/imagenet-sample
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.12}
SAMPLE=${2:-data/imagenet-sample}
KIT=device_kit
PART=56m  # + the working tree (~3 MB) stays under the 64 MiB a call carries
DEVICE_PY=${DEVICE_PY:-3.12}
DALI=${DALI:-nvidia-dali-cuda120==2.4.0}

"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' || {
    echo "device_kit: $PY is not a usable Python (with pyenv: PYENV_VERSION=3.12.1 $0 python3.12)" >&2; exit 1; }
bash tools/install_system_deps.sh
rm -rf "$KIT.tmp" && mkdir -p "$KIT.tmp/core/wheels" "$KIT.tmp/core/lib" "$KIT.tmp/core/loaders" "$KIT.tmp/dali"
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
    .venv/bin/fastvip pack "$SAMPLE" "$KIT.tmp/core/sample.beton" --max-side 320 --quiet
else
    echo "device_kit: no $SAMPLE; core/ has no sample.beton (pack one on the device)" >&2
fi

# DALI and what it needs that the GPU image lacks, as wheels for its Python and glibc, tarred
# and cut into parts (the DALI wheel alone is ~190 MB)
"$PY" -m pip download -q --only-binary=:all: --python-version "$DEVICE_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$KIT.tmp/dali" "$DALI"
for have in numpy packaging six typing_extensions pyyaml PyYAML wheel; do rm -f "$KIT.tmp"/dali/"$have"-*.whl; done
(cd "$KIT.tmp/dali" && sha256sum ./*.whl > SHA256SUMS && tar -cf - ./*.whl SHA256SUMS) |
    split -b "$PART" -d - "$KIT.tmp/part_"
i=0
for part in "$KIT.tmp"/part_*; do
    i=$((i + 1))
    mkdir -p "$KIT.tmp/dali_$i"
    mv "$part" "$KIT.tmp/dali_$i/"
done
rm -rf "$KIT.tmp/dali" "$KIT.tmp/unpacked" "$KIT.tmp/build"
rm -rf "$KIT" && mv "$KIT.tmp" "$KIT"
du -sh "$KIT"/*
