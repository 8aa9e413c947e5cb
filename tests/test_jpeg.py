"""The region JPEG decoder and the shrinking resize (loaders/_jpeg.c) against FFCV's
whole-image decode and OpenCV's INTER_AREA resize, and the FFCV loader built on them."""
import io

import numpy as np
import pytest
import torch
from ffcv.libffcv import imdecode, resize_crop
from PIL import Image

from fastvip.loaders import build_loader
from fastvip.loaders.jpeg import decode_crop, resize
from fastvip.loaders.keyed import DRAW_FLIP, crop_window, epoch_key, uniform


def _texture(rng, h, w):
    """Smooth gradients plus noise: every 8x8 block has content, edges included."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, (xx * yy) % 256], -1).astype(float)
    return (img * 0.7 + rng.normal(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _jpeg(img, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _whole(data: bytes, h: int, w: int, num: int) -> np.ndarray:
    """FFCV's own decode of the whole image at DCT scale num/8."""
    out = np.empty(h * w * 3, np.uint8)
    imdecode(np.frombuffer(data, np.uint8), out, h, w, h, w, 0, 0, num, 8, False, False)
    sh, sw = (h * num + 7) // 8, (w * num + 7) // 8
    return out[:sh * sw * 3].reshape(sh, sw, 3)


@pytest.mark.parametrize("kind", ["420", "444", "422", "gray", "progressive"])
def test_region_decode_equals_the_crop_of_a_whole_decode(kind):
    rng = np.random.default_rng(len(kind))
    h, w = 97, 131  # neither a multiple of 8 nor of 16: partial iMCUs at both edges
    img = _texture(rng, h, w)
    kw = {"420": {"subsampling": 2}, "444": {"subsampling": 0}, "422": {"subsampling": 1},
          "gray": {}, "progressive": {"subsampling": 2, "progressive": True}}[kind]
    if kind == "gray":
        img = np.repeat(img[..., :1], 3, -1)
        data = _jpeg(img[..., 0], **kw)
    else:
        data = _jpeg(img, **kw)
    crops = [(0, 0, h, w), (0, 0, 1, 1), (h - 1, w - 1, 1, 1), (16, 16, 32, 48), (15, 17, 33, 47)]
    crops += [(int(t), int(l), int(rng.integers(1, h - t + 1)), int(rng.integers(1, w - l + 1)))
              for t, l in zip(rng.integers(0, h, 40), rng.integers(0, w, 40))]
    for num in (8, 4, 2, 1):
        whole = _whole(data, h, w, num)
        for top, left, ch, cw in crops:
            part = decode_crop(data, top, left, ch, cw, num)
            r0, c0 = top * num // 8, left * num // 8
            r1, c1 = min(-(-(top + ch) * num // 8), whole.shape[0]), min(-(-(left + cw) * num // 8), whole.shape[1])
            assert part.shape == (r1 - r0, c1 - c0, 3), (num, top, left, ch, cw)
            np.testing.assert_array_equal(part, whole[r0:r1, c0:c1], err_msg=f"{kind} {num} {top, left, ch, cw}")


def test_region_decode_rejects_bad_input_without_crashing():
    with pytest.raises(ValueError, match="could not decode"):
        decode_crop(b"\xff\xd8 definitely not a jpeg" * 10, 0, 0, 4, 4)
    data = _jpeg(_texture(np.random.default_rng(0), 40, 40))
    with pytest.raises(ValueError, match="bad crop"):
        decode_crop(data, 50, 0, 4, 4)  # starts below the image
    # a truncated file decodes (libjpeg pads it) instead of failing or printing from a thread
    assert decode_crop(data[:len(data) // 2], 0, 0, 40, 40).shape == (40, 40, 3)


def test_shrinking_resize_matches_opencv_inter_area_and_mirrors():
    rng = np.random.default_rng(5)
    for trial in range(120):
        sh, sw = (int(v) for v in rng.integers(1, 300, 2))
        dh, dw = int(rng.integers(1, sh + 1)), int(rng.integers(1, sw + 1))
        if trial % 4 == 0:
            dh, dw = sh, sw  # same size: a copy
        big = _texture(rng, sh + 9, sw + 7)
        t, l = int(rng.integers(0, 9)), int(rng.integers(0, 7))
        ref, ours, mirrored = (np.empty((dh, dw, 3), np.uint8) for _ in range(3))
        resize_crop(big, t, t + sh, l, l + sw, ref)
        assert resize(big, t, t + sh, l, l + sw, ours, False) == 0
        assert resize(big, t, t + sh, l, l + sw, mirrored, True) == 0
        assert np.abs(ours.astype(int) - ref).max() <= 1, (sh, sw, dh, dw)
        if (dh, dw) == (sh, sw):
            np.testing.assert_array_equal(ours, big[t:t + sh, l:l + sw])
        np.testing.assert_array_equal(mirrored, ours[:, ::-1])
    grow = np.empty((30, 10, 3), np.uint8)
    assert resize(_texture(rng, 20, 20), 0, 20, 0, 20, grow, False) == -3  # growing is OpenCV's job


def test_ffcv_train_batches_equal_the_keyed_reference(tmp_path):
    """Every sample of a train batch == whole decode at the decoder's DCT scale, keyed crop,
    OpenCV INTER_AREA resize, keyed mirror (within the one level the fast resize may differ)."""
    from conftest import write_image

    from fastvip.console import Console
    from fastvip.data.pack import pack
    rng = np.random.default_rng(11)
    out, files = 24, {}
    for k in range(12):  # one image per class: the label names the image
        h, w = int(rng.integers(30, 230)), int(rng.integers(30, 230))
        img = _texture(rng, h, w)
        # q90 4:2:0 is kept byte for byte by pack, so these are the bytes the loader decodes
        write_image(tmp_path / "src" / f"c{k:02d}" / "a.jpg", img, quality=90, subsampling=2)
        files[k] = ((tmp_path / "src" / f"c{k:02d}" / "a.jpg").read_bytes(), h, w)
    beton = tmp_path / "t.beton"
    pack(tmp_path / "src", beton, console=Console(quiet=True))
    loader = build_loader("ffcv", beton, train=True, batch_size=12, image_size=out, device=torch.device("cpu"),
                          seed=4, workers=2)
    scales_seen = set()
    for epoch in range(3):
        loader.set_epoch(epoch)
        key = np.uint64(epoch_key(4, epoch))
        x, y = next(iter(loader))
        for img, label in zip(x.permute(0, 2, 3, 1).numpy(), y.tolist()):
            data, h, w = files[label]
            top, left, ch, cw = crop_window(h, w, key, label, True, 0.08, 1.0, np.log(3 / 4), np.log(4 / 3), 0.875)
            num = 8
            while num > 1 and ch * (num // 2) >= 8 * out and cw * (num // 2) >= 8 * out:
                num //= 2
            scales_seen.add(num)
            whole = _whole(data, h, w, num)
            r0, c0 = top * num // 8, left * num // 8
            r1 = min(whole.shape[0], max(r0 + 1, (top + ch) * num // 8))
            c1 = min(whole.shape[1], max(c0 + 1, (left + cw) * num // 8))
            ref = np.empty((out, out, 3), np.uint8)
            resize_crop(whole, r0, r1, c0, c1, ref)
            if uniform(key, label, DRAW_FLIP) < 0.5:
                ref = ref[:, ::-1]
            assert np.abs(img.astype(int) - ref).max() <= 1, (epoch, label, num)
    assert {8, 4} <= scales_seen  # both the full-scale and a DCT-scaled region decode ran


def test_an_unbuilt_extension_is_a_one_line_error(tmp_path):
    import subprocess
    import sys
    code = ("import sys; sys.modules['fastvip.loaders._jpeg'] = None\n"  # as if `pip install -e .` never built it
            "import torch\nfrom fastvip.errors import FastvipError\nfrom fastvip.loaders import build_loader\n"
            "try:\n    build_loader('ffcv', 'x.beton', train=True, batch_size=4, image_size=8, device=torch.device('cpu'))\n"
            "except FastvipError as e:\n    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "ERROR loader 'ffcv' is not available" in out.stdout, out.stderr[-2000:]
    assert "pip install -e ." in out.stdout and "libjpeg-dev" in out.stdout
