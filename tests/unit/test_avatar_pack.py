"""Avatar packs: the shipped pack loads, and missing packs or files fail naming what is missing."""

import shutil

import numpy as np
import pytest

from avatarchat.avatar.pack import ENV_DIR, AvatarPack, avatars_dir, list_packs


def test_astronaut_pack_loads():
    pack = AvatarPack.load("astronaut")
    assert pack.name == "astronaut"
    assert pack.size == (512, 512)
    assert pack.image.shape == (512, 512, 3) and pack.image.dtype == np.uint8
    assert pack.landmarks.shape == (478, 3)
    assert pack.fps == 25
    assert "public domain" in pack.meta["licence"]
    x0, y0, x1, y1 = pack.regions["mouth_box"]
    lips = pack.xy("lips_outer_upper")
    # the landmarks are on the face: the lips lie inside the mouth box, in the upper half
    assert (lips[:, 0] >= x0).all() and (lips[:, 0] <= x1).all()
    assert (lips[:, 1] >= y0).all() and (lips[:, 1] <= y1).all()
    # head and shoulders: the face fills about a third of the frame's height, the mouth above the middle
    assert pack.meta["framing"] == "head-and-shoulders"
    assert 0.3 < pack.meta["measures"]["face_height_px"] / pack.size[1] < 0.45
    assert y1 < 0.6 * pack.size[1]
    assert "astronaut" in list_packs()


def test_missing_pack_names_path_and_lists_packs():
    with pytest.raises(FileNotFoundError) as err:
        AvatarPack.load("no_such_pack")
    message = str(err.value)
    assert str(avatars_dir() / "no_such_pack") in message
    assert "astronaut" in message


def test_env_dir_and_missing_file(tmp_path, monkeypatch):
    shutil.copytree(avatars_dir() / "astronaut", tmp_path / "copy")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert list_packs() == ["copy"]
    assert AvatarPack.load("copy").size == (512, 512)
    (tmp_path / "copy" / "landmarks.json").unlink()
    with pytest.raises(FileNotFoundError, match="landmarks.json"):
        AvatarPack.load("copy")
    with pytest.raises(FileNotFoundError, match="copy"):
        AvatarPack.load("astronaut")  # not in this directory; the message lists what is


def test_load_by_path():
    pack = AvatarPack.load(avatars_dir() / "astronaut")
    assert pack.name == "astronaut"
