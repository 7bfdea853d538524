"""avatars/tools/make_pack.py: a portrait makes a pack the service loads; unsuitable photos are
refused with one clear line and leave nothing behind.

The tool needs mediapipe (numpy<2), so it runs as a subprocess in its own venv
(scripts/make_pack_venv.sh; $AVATAR_CHAT_PACK_PYTHON, else .venv-packtool/bin/python). Its pure
numpy parts (the head-pose estimator, the atomic write) are imported here, in the service's venv.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarchat.avatar.pack import AvatarPack

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "avatars/tools/make_pack.py"
SHIPPED = ROOT / "avatars/astronaut"
ASTRONAUT_SOURCE = "skimage.data.astronaut(): Eileen Collins, NASA portrait (scikit-image)"


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_pack_under_test", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mp_tool = _load_tool()


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def pack_python() -> Path:
    """The pack tool's python; skipped when absent on a developer machine, a failure under CI."""
    env = os.environ.get("AVATAR_CHAT_PACK_PYTHON")
    path = Path(env) if env else ROOT / ".venv-packtool/bin/python"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = (f"no pack-tool python at {path}: run `bash scripts/make_pack_venv.sh` and set "
              "AVATAR_CHAT_PACK_PYTHON to the path it prints (scripts/test.sh does both)")
    if env or _ci():
        pytest.fail(reason + (" (CI is set: this must not be skipped)" if _ci() else ""))
    pytest.skip(reason)


@pytest.fixture(scope="module")
def astronaut_bgr(pack_python, tmp_path_factory) -> np.ndarray:
    """The whole NASA photo the shipped pack is cut from (512x512, BGR), from scikit-image in the
    tool's venv: the refusal tests below edit it at its own coordinates."""
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    subprocess.run([str(pack_python), "-c", "import sys, cv2, skimage.data; "
                    "cv2.imwrite(sys.argv[1], skimage.data.astronaut()[:, :, ::-1])", str(path)],
                   check=True, timeout=120)
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def run_tool(python: Path, image: str, out_dir: Path, *extra: str, name: str = "me"):
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")  # the tool's venv, not this one
    env = {k: v for k, v in os.environ.items() if k not in drop}
    cmd = [str(python), str(TOOL), image, name, "--licence", "test", "--out-dir", str(out_dir)]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=300, env=env)


def assert_refused(result, out_dir: Path, *words: str) -> str:
    """Exit status 2, stderr one "make_pack: ..." line holding ``words``, and nothing written."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("make_pack: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not any(out_dir.iterdir()), f"left behind: {sorted(p.name for p in out_dir.iterdir())}"
    return lines[0]


def write_png(path: Path, bgr: np.ndarray) -> str:
    assert cv2.imwrite(str(path), bgr)
    return str(path)


# -- the tool end to end (mediapipe, in the tool's venv) ------------------------------------------

@pytest.mark.models
def test_astronaut_makes_the_shipped_pack(pack_python, tmp_path):
    out = tmp_path / "packs"
    made = run_tool(pack_python, "skimage:astronaut", out, "--source", ASTRONAUT_SOURCE,
                    name="astronaut")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut"]  # no temporary directory left

    pack = AvatarPack.load(out / "astronaut")
    shipped = AvatarPack.load(SHIPPED)
    assert pack.size == shipped.size == (512, 512)
    assert pack.contours == shipped.contours and pack.points == shipped.points
    error = np.linalg.norm(pack.landmarks[:, :2] - shipped.landmarks[:, :2], axis=1)
    assert error.mean() < 1.0, f"landmarks moved {error.mean():.2f} px on average"
    assert np.abs(pack.image.astype(int) - shipped.image.astype(int)).mean() < 1.0

    # An existing pack is kept unless --force: refused before any work, and left as it was.
    before = (out / "astronaut/landmarks.json").read_bytes()
    again = run_tool(pack_python, "skimage:astronaut", out, name="astronaut")
    assert again.returncode == 2 and again.stderr.startswith("make_pack: "), again.stderr
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (out / "astronaut/landmarks.json").read_bytes() == before
    forced = run_tool(pack_python, "skimage:astronaut", out, "--force", name="astronaut")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut"]
    assert AvatarPack.load(out / "astronaut").meta["source"] == "skimage:astronaut"


@pytest.mark.models
def test_unreadable_or_missing_photo(pack_python, tmp_path):
    out = tmp_path / "packs"
    out.mkdir()
    assert_refused(run_tool(pack_python, str(tmp_path / "absent.jpg"), out), out, "no such file")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    assert_refused(run_tool(pack_python, str(junk), out), out, "cannot read", "JPEG or PNG")


@pytest.mark.models
@pytest.mark.parametrize("kind", ["gray", "noise"])
def test_photo_without_a_face(pack_python, tmp_path, kind):
    out = tmp_path / "packs"
    out.mkdir()
    rng = np.random.default_rng(0)
    img = (np.full((512, 512, 3), 128, np.uint8) if kind == "gray"
           else rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    line = assert_refused(run_tool(pack_python, write_png(tmp_path / f"{kind}.png", img), out), out,
                          "no face")
    assert "one person" in line  # says what photo would work


@pytest.mark.models
def test_two_faces(pack_python, tmp_path, astronaut_bgr):
    out = tmp_path / "packs"
    out.mkdir()
    canvas = np.full((512, 1024, 3), 128, np.uint8)
    canvas[:, :512] = astronaut_bgr
    canvas[:, 512:] = astronaut_bgr
    assert_refused(run_tool(pack_python, write_png(tmp_path / "two.png", canvas), out), out,
                   "found 2 faces", "one person")


@pytest.mark.models
def test_face_too_small(pack_python, tmp_path, astronaut_bgr):
    out = tmp_path / "packs"
    out.mkdir()
    canvas = np.full((512, 512, 3), 128, np.uint8)
    canvas[208:304, 208:304] = cv2.resize(astronaut_bgr, (96, 96), interpolation=cv2.INTER_AREA)
    line = assert_refused(run_tool(pack_python, write_png(tmp_path / "small.png", canvas), out),
                          out, "too small", f"minimum is {mp_tool.MIN_FACE_HEIGHT_PX} px")
    assert " px from forehead to chin" in line


@pytest.mark.models
def test_face_in_profile(pack_python, tmp_path, astronaut_bgr):
    """Squeeze the image's left half of the face and stretch its right half: the nose ends up near
    one eye, as when the head turns ~35 degrees."""
    out = tmp_path / "packs"
    out.mkdir()
    h, w = astronaut_bgr.shape[:2]
    # face edge, nose and other face edge (x 175, 223, 275 in the photo) move to 210, 218, 310
    src_x = np.interp(np.arange(w), [0, 210, 218, 310, w - 1], [0, 175, 223, 275, w - 1])
    map_x = np.tile(src_x.astype(np.float32), (h, 1))
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    turned = cv2.remap(astronaut_bgr, map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    assert_refused(run_tool(pack_python, write_png(tmp_path / "turned.png", turned), out), out,
                   "turned", "degrees", "looking straight at the camera")


@pytest.mark.models
def test_head_tilted(pack_python, tmp_path, astronaut_bgr):
    out = tmp_path / "packs"
    out.mkdir()
    rot = cv2.getRotationMatrix2D((225, 120), 30, 1.0)
    tilted = cv2.warpAffine(astronaut_bgr, rot, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    assert_refused(run_tool(pack_python, write_png(tmp_path / "tilted.png", tilted), out), out,
                   "tilted", "upright")


# -- the pure parts, in this process (numpy 2, no mediapipe) --------------------------------------

def test_tool_imports_without_mediapipe():
    assert "mediapipe" not in sys.modules
    assert mp_tool.MAX_YAW_DEG < 45 and mp_tool.MAX_ROLL_DEG < 45


@pytest.fixture(scope="module")
def shipped_points() -> np.ndarray:
    return np.asarray(json.loads((SHIPPED / "landmarks.json").read_text())["points"], float)


def turn(pts: np.ndarray, degrees: float) -> np.ndarray:
    """The landmarks of the head turned about the vertical axis (positive: nose to the image's
    right), seen orthographically; z is in the same units as x."""
    t = np.radians(-degrees)
    c = pts.mean(axis=0)
    out = pts.copy()
    out[:, 0] = c[0] + (pts[:, 0] - c[0]) * np.cos(t) + (pts[:, 2] - c[2]) * np.sin(t)
    out[:, 2] = c[2] - (pts[:, 0] - c[0]) * np.sin(t) + (pts[:, 2] - c[2]) * np.cos(t)
    return out


def tilt(pts: np.ndarray, degrees: float) -> np.ndarray:
    """The landmarks rotated in the image plane, clockwise on screen, about the face's centre."""
    t = np.radians(degrees)
    c = pts[:, :2].mean(axis=0)
    out = pts.copy()
    out[:, :2] = (pts[:, :2] - c) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) + c
    return out


def test_shipped_astronaut_is_frontal_and_upright(shipped_points):
    yaw, roll = mp_tool.head_pose(shipped_points)
    assert abs(yaw) < 5 and abs(roll) < 5
    assert mp_tool.check_pose(shipped_points) == (yaw, roll)
    assert mp_tool.face_height(shipped_points) > 1.25 * mp_tool.MIN_FACE_HEIGHT_PX


@pytest.mark.parametrize("degrees", [-40, -30, -15, 15, 30, 40])
def test_yaw_estimate_follows_a_turned_head(shipped_points, degrees):
    pts = turn(shipped_points, degrees)
    yaw, roll = mp_tool.head_pose(pts)
    assert yaw == pytest.approx(degrees, abs=3)
    assert abs(roll) < 6
    if abs(degrees) > mp_tool.MAX_YAW_DEG:
        with pytest.raises(mp_tool.PackError, match="turned .* degrees"):
            mp_tool.check_pose(pts)
    else:
        mp_tool.check_pose(pts)


@pytest.mark.parametrize("degrees", [-30, -12, 12, 30])
def test_roll_estimate_follows_a_tilted_head(shipped_points, degrees):
    base_yaw, base_roll = mp_tool.head_pose(shipped_points)
    pts = tilt(shipped_points, degrees)
    yaw, roll = mp_tool.head_pose(pts)
    assert roll == pytest.approx(base_roll + degrees, abs=0.5)
    assert yaw == pytest.approx(base_yaw, abs=0.5)  # tilting alone does not read as turning
    if abs(roll) > mp_tool.MAX_ROLL_DEG:
        with pytest.raises(mp_tool.PackError, match="tilted .* degrees"):
            mp_tool.check_pose(pts)
    else:
        mp_tool.check_pose(pts)


def test_pack_is_written_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "packs" / "me"

    def fill(text):
        def write(d: Path):
            (d / "pack.yaml").write_text(text)
        return write

    def fail(d: Path):
        (d / "pack.yaml").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        mp_tool.write_atomically(dest, False, fail)
    assert list(dest.parent.iterdir()) == []  # no pack, no temporary directory

    mp_tool.write_atomically(dest, False, fill("one"))
    assert (dest / "pack.yaml").read_text() == "one"
    with pytest.raises(mp_tool.PackError, match="already exists.*--force"):
        mp_tool.write_atomically(dest, False, fill("two"))
    with pytest.raises(OSError):
        mp_tool.write_atomically(dest, True, fail)
    assert (dest / "pack.yaml").read_text() == "one"  # a failed --force keeps the old pack
    mp_tool.write_atomically(dest, True, fill("three"))
    assert (dest / "pack.yaml").read_text() == "three"
    assert [p.name for p in dest.parent.iterdir()] == ["me"]
