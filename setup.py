"""Only the C part of the build lives here; everything else is in setup.cfg."""
from setuptools import Extension, setup

# Region JPEG decode for the FFCV loader (libjpeg-turbo's jpeg_crop_scanline / jpeg_skip_scanlines).
setup(ext_modules=[Extension("fastvip.loaders._jpeg", ["loaders/_jpeg.c"], libraries=["jpeg"],
                             extra_compile_args=["-O3"])])
