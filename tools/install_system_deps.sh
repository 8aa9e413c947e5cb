#!/usr/bin/env bash
# FFCV builds from source and links OpenCV and libjpeg-turbo found through pkg-config;
# fastvip's own region decoder (loaders/_jpeg.c) links libjpeg(-turbo).
# Install them with apt-get when missing and we are root; otherwise say exactly what to run.
set -euo pipefail
PKGS="pkg-config libopencv-dev libturbojpeg0-dev libjpeg-dev"
if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists opencv4 libturbojpeg libjpeg; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "fastvip setup: installing FFCV's system packages: $PKGS"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $PKGS >/dev/null
    exit 0
fi
echo "fastvip setup: FFCV needs system packages that pkg-config cannot find." >&2
echo "Install them first, e.g.:  sudo apt-get install -y $PKGS" >&2
exit 1
