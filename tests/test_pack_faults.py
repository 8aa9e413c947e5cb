"""pack under real-world faults: broken images, odd files, kills, full disks."""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from conftest import REPO, write_image
from fastvip.console import Console
from fastvip.errors import FastvipError
from fastvip.data.pack import pack
from fastvip.data.packed import META_SUFFIX, open_packed
from fastvip.data.transcode import transcode

Q = Console(quiet=True)


def _arr(seed=0, h=60, w=80):
    """A smooth random image (JPEG reproduces it closely, unlike white noise)."""
    small = (np.random.default_rng(seed).random((6, 8, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _decoded(result):
    ok, payload = result
    assert ok, payload
    data, h, w = payload
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (w, h)
    return np.asarray(img)


@pytest.fixture
def faults(tmp_path):
    """One file per fault kind, named for what it is."""
    d = tmp_path
    a = _arr()
    good = write_image(d / "good.JPEG", a)
    full = good.read_bytes()
    (d / "truncated.JPEG").write_bytes(full[: len(full) // 2])
    corrupt = bytearray(full)
    corrupt[20:400] = os.urandom(380)  # headers and tables destroyed
    (d / "corrupt.JPEG").write_bytes(bytes(corrupt))
    (d / "zero.JPEG").write_bytes(b"")
    (d / "text.JPEG").write_text("this is not an image\n")
    write_image(d / "png_named.JPEG", a, fmt="PNG")
    Image.fromarray(a).convert("CMYK").save(d / "cmyk.JPEG")
    write_image(d / "gray.JPEG", a[..., 0])
    Image.fromarray(a).convert("P").save(d / "palette.png")
    Image.fromarray(np.dstack([a, np.full(a.shape[:2], 100, np.uint8)]), "RGBA").save(d / "alpha.png")
    Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(d / "gray16.png")
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(d / "exif_rot.JPEG", exif=exif)
    write_image(d / "tiny.JPEG", a[:5, :5])
    os.symlink(d / "nowhere.JPEG", d / "broken_link.JPEG")
    os.symlink(d / "self_loop.JPEG", d / "self_loop.JPEG")
    write_image(d / "web.webp", a, fmt="WEBP", lossless=True)
    write_image(d / "bitmap.bmp", a, fmt="BMP")
    write_image(d / "tiff.tif", a, fmt="TIFF")
    return d


def test_each_fault_is_converted_or_skipped_with_a_reason(faults):
    res = {p.name: transcode(os.fspath(p), 512, 90) for p in faults.iterdir()}
    for name in ("truncated.JPEG", "corrupt.JPEG", "zero.JPEG", "text.JPEG", "tiny.JPEG",
                 "broken_link.JPEG", "self_loop.JPEG"):
        assert res[name][0] is False, name
    assert res["truncated.JPEG"][1] == "truncated image"
    assert res["zero.JPEG"][1] == "empty file"
    assert res["text.JPEG"][1] == "not a readable image"
    assert res["tiny.JPEG"][1].startswith("too small (5x5")
    assert "No such file" in res["broken_link.JPEG"][1]
    assert "symbolic links" in res["self_loop.JPEG"][1]
    a = _arr()
    # converted (content decides the decoder): pixels close to the original
    for name in ("png_named.JPEG", "web.webp", "bitmap.bmp", "tiff.tif", "palette.png"):
        px = _decoded(res[name])
        assert px.shape == a.shape and np.abs(px.astype(int) - a).mean() < 40, name
    assert np.abs(_decoded(res["gray.JPEG"])[..., 1].astype(int) - a[..., 0]).mean() < 8
    assert np.abs(_decoded(res["cmyk.JPEG"]).astype(int) - a).mean() < 25
    assert np.abs(_decoded(res["gray16.png"])[..., 0].astype(int) - a[..., 0]).mean() < 3
    alpha = _decoded(res["alpha.png"])  # composited on white, not dropped
    assert alpha.shape == a.shape
    # EXIF orientation 6: stored 80x60 landscape, displayed 60x80 portrait
    rot = _decoded(res["exif_rot.JPEG"])
    assert rot.shape == (80, 60, 3)
    assert np.abs(rot.astype(int) - np.rot90(a, k=-1)).mean() < 25


def test_pack_lists_every_skip_and_strict_refuses(faults, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    os.rename(faults, src / "cls")
    out = tmp_path_factory.mktemp("out")
    res = pack(src, out / "f.beton", console=Q)
    skipped = dict(res.skipped)
    assert set(skipped) == {os.path.join("cls", n) for n in (
        "truncated.JPEG", "corrupt.JPEG", "zero.JPEG", "text.JPEG", "tiny.JPEG",
        "broken_link.JPEG", "self_loop.JPEG")}
    packed = open_packed(out / "f.beton")
    assert res.num_images == packed.num_samples == 11  # 18 files, 7 skipped
    sidecar = json.loads(Path(str(out / "f.beton") + META_SUFFIX).read_text())
    assert len(sidecar["entries"][0]["skipped"]) == 7
    with pytest.raises(FastvipError, match="--strict: 7 file"):
        pack(src, out / "g.beton", strict=True, console=Q)


def test_huge_jpeg_is_decoded_reduced_without_the_memory(tmp_path):
    path = tmp_path / "huge.JPEG"
    Image.new("RGB", (12000, 9000), (10, 200, 30)).save(path, quality=50)
    # VmHWM is this process's own peak (ru_maxrss would include pytest's, kept across exec)
    code = ("from fastvip.data.transcode import transcode; "
            f"ok, p = transcode({os.fspath(path)!r}, 512, 90); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(ok, p[1], p[2], int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    ok, h, w, rss_mb = out.stdout.split()
    assert ok == "True" and (int(w), int(h)) == (512, 384)
    # a full decode alone is 12000*9000*3 bytes = 309 MiB
    assert int(rss_mb) < 200, out.stdout


def test_oversized_non_jpeg_is_skipped_before_decoding(tmp_path):
    # a PNG whose header claims 20000x20000 (400 MP, 1.2 GB decoded)
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    assert transcode(os.fspath(tmp_path / "bomb.png"), 512, 90) == (False, "image too large to decode (20000x20000)")


def test_symlink_loops_and_hidden_entries_are_listed(tmp_path):
    src = tmp_path / "src"
    write_image(src / "a" / "x.JPEG", _arr())
    os.symlink(src / "a", src / "a" / "loop")          # folder loop inside a class
    os.symlink(src / "looping", src / "looping")       # top-level link to itself
    (src / ".hidden").mkdir()
    (src / "a" / "notes.txt").write_text("hello")
    res = pack(src, tmp_path / "o.beton", console=Q)
    reasons = dict(res.skipped)
    assert reasons[os.path.join("a", "loop")] == "symlinked folder not followed"
    assert reasons["looping"].startswith("not a file or folder")
    assert reasons[".hidden"] == "hidden folder ignored"
    assert reasons[os.path.join("a", "notes.txt")] == "not an image file extension"
    assert open_packed(tmp_path / "o.beton").classes == ["a"]


def test_non_utf8_file_names_round_trip(tmp_path, cpu_env):
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"c"))
    good = write_image(tmp_path / "g.JPEG", _arr())
    os.rename(good, os.path.join(src, b"c", b"caf\xe9.JPEG"))
    with open(os.path.join(src, b"c", b"bro\xefken.JPEG"), "wb") as f:
        f.write(b"garbage")
    out = tmp_path / "n.beton"
    p = subprocess.run([sys.executable, "-m", "fastvip", "pack", os.fsdecode(src), os.fspath(out)],
                       capture_output=True, cwd=REPO, env=cpu_env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert b"Traceback" not in p.stderr and b"skipped 1" in p.stdout
    ids = open_packed(out).ids
    assert [os.fsencode(i) for i in ids] == [b"caf\xe9.JPEG"]


def test_one_line_errors_for_bad_sources_and_outputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimg" / "cls_a").mkdir(parents=True)
    (tmp_path / "noimg" / "cls_b").mkdir()
    write_image(tmp_path / "ok" / "c" / "a.JPEG", _arr())
    cases = [
        (tmp_path / "missing", tmp_path / "o.beton", "does not exist"),
        (tmp_path / "empty", tmp_path / "o.beton", "holds no images"),
        (tmp_path / "noimg", tmp_path / "o.beton", "2 class folders but no images"),
        (tmp_path / "ok", tmp_path / "nodir" / "o.beton", "does not exist"),
        (tmp_path / "ok", Path("/proc/fastvip-test.beton"), "not writable"),
        (tmp_path / "ok", tmp_path / "o.txt", "should end in .beton"),
    ]
    for src, out, msg in cases:
        with pytest.raises(FastvipError, match=msg):
            pack(src, out, console=Q)


def _many_images(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        # PNGs must be re-encoded: enough work per image for a kill to land mid-pack
        write_image(root / f"c{i % 3}" / f"{i}.png", rng.integers(0, 255, (400, 400, 3)), fmt="PNG",
                    compress_level=1)
    return root


def _pack_proc(src, out, *extra, env=None, preexec_fn=None):
    return subprocess.Popen([sys.executable, "-m", "fastvip", "pack", os.fspath(src), os.fspath(out),
                             "--workers", "2", *extra], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        alive = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid and p.status() != "zombie"]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_sigkill_at_any_moment_never_damages_output(tmp_path, cpu_env):
    src = _many_images(tmp_path / "src", 150)
    out = tmp_path / "o.beton"
    assert _pack_proc(src, out, env=cpu_env).wait(timeout=300) == 0
    first = open_packed(out).ids
    for delay in (0.8, 2.5, 4.5, 7.0):
        proc = _pack_proc(src, out, "--force", env=cpu_env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)  # pack alone: its workers must not outlive it
        proc.wait()
        assert _group_gone(proc.pid), f"workers survived a kill at {delay}s"
        assert open_packed(out).ids == first  # old or new, always whole and consistent
    # the next run removes the temps the killed ones left
    assert _pack_proc(src, out, "--force", env=cpu_env).wait(timeout=300) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.beton", "o.beton" + META_SUFFIX, "src"]


def test_sigkill_on_the_group_before_the_first_pack_leaves_nothing(tmp_path, cpu_env):
    src = _many_images(tmp_path / "src", 60)
    out = tmp_path / "o.beton"
    proc = _pack_proc(src, out, env=cpu_env)
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _group_gone(proc.pid)
    assert not out.exists() and not Path(str(out) + META_SUFFIX).exists()


def _limit_file_size(limit):
    def apply():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("limit,phase", [(40_000, "cannot write"), (1 << 20, "writing o.beton failed")])
def test_full_disk_is_a_one_line_error(tmp_path, cpu_env, limit, phase):
    src = tmp_path / "src"
    for i in range(30):
        write_image(src / "c" / f"{i}.JPEG", _arr(i, 120, 120), quality=95)
    out = tmp_path / "o.beton"
    proc = _pack_proc(src, out, env=cpu_env, preexec_fn=_limit_file_size(limit))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phase in lines[0], stderr
    assert "File too large" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
