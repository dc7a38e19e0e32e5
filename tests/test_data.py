"""Data loading: layouts, shipped vs generated LR, bad files, patch sampling determinism, dihedral transforms."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr import data as D
from sr.degrade import bicubic_downsample
from sr.errors import ConfigError, DataError


def _rand_img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


# ------------------------------------------------------------------------------------------------ files


def test_list_images_sorted_filtered_and_empty_folder_error(tmp_path):
    for name in ["b.png", "a.BMP", "c.jpg", ".hidden.png"]:
        _save(tmp_path / name, _rand_img(8, 8))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in D.list_images(tmp_path)] == ["a.BMP", "b.png", "c.jpg"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        D.list_images(empty)
    msg = str(exc.value)
    assert str(empty) in msg and ".png" in msg and ".bmp" in msg and "\n" not in msg
    with pytest.raises(DataError, match="not found"):
        D.list_images(tmp_path / "nope")


def test_read_image_modes(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = D.read_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)

    rgba = np.dstack([_rand_img(6, 5), np.full((6, 5), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.array_equal(D.read_image(tmp_path / "a.png"), rgba[:, :, :3])

    g16 = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert D.read_image(tmp_path / "g16.png")[:, :, 1].tolist() == [[0, 255], [100, 200]]


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    garbage = tmp_path / "x.png"
    garbage.write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(DataError) as exc:
        D.read_image(garbage)
    assert str(garbage) in str(exc.value) and "\n" not in str(exc.value)

    full = _save(tmp_path / "full.png", _rand_img(64, 64, 2))
    data = full.read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        D.read_image(trunc)
    print("truncated PNG ->", exc.value)
    assert str(trunc) in str(exc.value) and "--skip-bad" in str(exc.value)

    with pytest.raises(DataError, match="not found"):
        D.read_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------ eval layouts


def test_set5_benchmark_layout_shipped_matches_generated(set5_dir):
    for scale in (2, 3, 4):
        shipped = D.load_eval_pairs(set5_dir, scale)  # auto -> shipped LR_bicubic/X{s}
        assert [p.name for p in shipped] == ["baby", "bird", "butterfly", "head", "woman"]
        generated = D.load_eval_pairs(set5_dir, scale, lr_source="generated")
        for s, g in zip(shipped, generated, strict=True):
            assert s.hr.shape == (s.lr.shape[0] * scale, s.lr.shape[1] * scale, 3)
            assert np.array_equal(s.hr, g.hr)
            diff = np.abs(s.lr.astype(int) - g.lr.astype(int))
            # sr.degrade claims MATLAB-exact LR; allow 1 grey level in a few pixels before calling it a layout bug
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (scale, s.name, diff.max())
    # butterfly is 256 px: at x3 HR is cropped to 255 = 3 x 85
    b3 = D.load_eval_pairs(set5_dir, 3)[2]
    assert b3.lr.shape[:2] == (85, 85) and b3.hr.shape[:2] == (255, 255)


def test_benchmark_layout_crops_larger_hr(tmp_path):
    hr = _rand_img(50, 38, 3)  # 50 = 3*16 + 2, 38 = 3*12 + 2
    _save(tmp_path / "HR" / "img.png", hr)
    _save(tmp_path / "LR_bicubic" / "X3" / "imgx3.png", _rand_img(16, 12, 4))
    (pair,) = D.load_eval_pairs(tmp_path, 3, lr_source="shipped")
    assert pair.name == "img" and pair.lr.shape == (16, 12, 3)
    assert np.array_equal(pair.hr, hr[:48, :36])
    # the HR folder itself is accepted too
    assert D.load_eval_pairs(tmp_path / "HR", 3)[0].lr.shape == (16, 12, 3)


def test_shipped_lr_size_mismatch_names_file(tmp_path):
    _save(tmp_path / "HR" / "img.png", _rand_img(40, 40))
    lr_file = _save(tmp_path / "LR_bicubic" / "X2" / "imgx2.png", _rand_img(19, 20))
    with pytest.raises(DataError) as exc:
        D.load_eval_pairs(tmp_path, 2)
    assert str(lr_file) in str(exc.value) and "20x19" in str(exc.value)


def test_shipped_missing_lr(tmp_path):
    _save(tmp_path / "HR" / "a.png", _rand_img(40, 40))
    _save(tmp_path / "HR" / "b.png", _rand_img(40, 40))
    _save(tmp_path / "LR_bicubic" / "X2" / "ax2.png", _rand_img(20, 20))
    with pytest.raises(DataError, match=r"missing LR image .*bx2\.png"):
        D.load_eval_pairs(tmp_path, 2)
    with pytest.raises(DataError, match="X4"):
        D.load_eval_pairs(tmp_path, 4, lr_source="shipped")
    # auto without X4 generates; generated ignores the shipped X2 folder
    assert D.load_eval_pairs(tmp_path, 4)[0].lr.shape == (10, 10, 3)
    gen = D.load_eval_pairs(tmp_path, 2, lr_source="generated")
    assert np.array_equal(gen[1].lr, bicubic_downsample(gen[1].hr, 2))


def test_div2k_and_flickr2k_layouts(tmp_path):
    root = tmp_path / "DIV2K"
    hr_valid = _rand_img(64, 48, 5)
    _save(root / "DIV2K_valid_HR" / "0801.png", hr_valid)
    lr_valid = _save(root / "DIV2K_valid_LR_bicubic" / "X4" / "0801x4.png", _rand_img(16, 12, 6))
    _save(root / "DIV2K_train_HR" / "0001.png", _rand_img(64, 48, 7))

    (pair,) = D.load_eval_pairs(root, 4)  # root with train+valid: evaluation picks valid
    assert pair.name == "0801"
    assert np.array_equal(pair.lr, D.read_image(lr_valid)) and np.array_equal(pair.hr, hr_valid)
    (pair2,) = D.load_eval_pairs(root / "DIV2K_valid_HR", 4, lr_source="shipped")
    assert np.array_equal(pair2.lr, pair.lr)
    # no X2 folder: auto generates from HR
    (gen,) = D.load_eval_pairs(root, 2)
    assert np.array_equal(gen.lr, bicubic_downsample(hr_valid, 2))

    flickr = tmp_path / "Flickr2K"
    _save(flickr / "Flickr2K_HR" / "000001.png", _rand_img(30, 30, 8))
    _save(flickr / "Flickr2K_LR_bicubic" / "X3" / "000001x3.png", _rand_img(10, 10, 9))
    (fp,) = D.load_eval_pairs(flickr, 3, lr_source="shipped")
    assert fp.name == "000001" and fp.lr.shape == (10, 10, 3) and fp.hr.shape == (30, 30, 3)

    two = tmp_path / "two"
    _save(two / "A_HR" / "1.png", _rand_img(8, 8))
    _save(two / "B_HR" / "1.png", _rand_img(8, 8))
    with pytest.raises(DataError, match="several HR folders"):
        D.load_eval_pairs(two, 2)


def test_plain_hr_folder_generates_lr_and_caches(tmp_path):
    hr = _rand_img(37, 42, 10)
    f = _save(tmp_path / "img.png", hr)
    (pair,) = D.load_eval_pairs(tmp_path, 2)
    assert pair.hr.shape == (36, 42, 3) and np.array_equal(pair.hr, hr[:36])
    assert np.array_equal(pair.lr, bicubic_downsample(hr, 2))
    with pytest.raises(DataError, match="shipped"):
        D.load_eval_pairs(tmp_path, 2, lr_source="shipped")

    (again,) = D.load_eval_pairs(tmp_path, 2)
    assert again.lr is pair.lr  # in-memory cache hit
    new = _rand_img(37, 42, 11)
    _save(f, new)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # mtime changes even on coarse clocks
    (edited,) = D.load_eval_pairs(tmp_path, 2)
    assert np.array_equal(edited.lr, bicubic_downsample(new, 2))
    D.clear_lr_cache()
    assert D._LR_CACHE == {}


def test_skip_bad_warns_and_default_raises(tmp_path):
    _save(tmp_path / "a.png", _rand_img(20, 20))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"definitely not a png")
    _save(tmp_path / "c.png", _rand_img(20, 20))
    with pytest.raises(DataError, match="b.png"):
        D.load_eval_pairs(tmp_path, 2)
    with pytest.warns(UserWarning, match=r"b\.png"):
        pairs = D.load_eval_pairs(tmp_path, 2, skip_bad=True)
    assert [p.name for p in pairs] == ["a", "c"]


# ------------------------------------------------------------------------------------------------ fallbacks


def test_fallback_images_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample images must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    imgs = D.sample_hr_images()
    assert len(imgs) >= 6
    for im in imgs:
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) >= 256
    train, ev = D.default_train_sources(), D.sample_hr_images(split="eval")
    assert not any(np.array_equal(a, b) for a in train for b in ev if a.shape == b.shape)

    pairs = D.fallback_eval_pairs(3)
    assert len(pairs) == 2
    for p in pairs:
        assert p.name.startswith("skimage_") and p.hr.shape[:2] == (p.lr.shape[0] * 3, p.lr.shape[1] * 3)


def test_resolve_train_sources(tmp_path):
    default = D.resolve_train_sources(None)
    assert all(isinstance(a, np.ndarray) for a in default) and len(default) == len(D.default_train_sources())

    root = tmp_path / "DIV2K"
    _save(root / "DIV2K_train_HR" / "0001.png", _rand_img(8, 8))
    _save(root / "DIV2K_valid_HR" / "0801.png", _rand_img(8, 8))
    plain = tmp_path / "plain"
    one = _save(plain / "x.png", _rand_img(8, 8))
    bench = tmp_path / "bench"
    _save(bench / "HR" / "y.png", _rand_img(8, 8))
    got = D.resolve_train_sources([str(root), str(plain), str(one), str(bench)])
    assert got == [root / "DIV2K_train_HR", plain, one, bench / "HR"]
    with pytest.raises(DataError, match="not found"):
        D.resolve_train_sources([str(tmp_path / "missing")])


# ------------------------------------------------------------------------------------------------ patches


def test_patch_dataset_shapes_and_alignment():
    scale, lr_img = 3, _rand_img(20, 25, 12)
    hr_img = np.kron(lr_img, np.ones((scale, scale, 1), np.uint8))  # each LR pixel is a 3x3 HR block
    ds = D.PatchDataset([hr_img], scale=scale, hr_patch=24, lr_images=[lr_img], samples_per_epoch=40)
    assert len(ds) == 40
    ks = set()
    for i in range(40):
        lr, hr = ds[i]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 24, 24) and lr.dtype == hr.dtype == torch.float32
        assert float(lr.min()) >= 0.0 and float(hr.max()) <= 1.0
        # aligned crop and the same flip/rotation on both: HR block corners reproduce the LR patch exactly
        assert torch.equal(hr[:, ::scale, ::scale], lr)
        ks.add(ds.crop_params(i).k)
    assert ks == set(range(8))

    # generated LR equals bicubic_downsample of the (cropped) HR; crop_params locates the patch
    hr2 = _rand_img(50, 47, 13)
    ds2 = D.PatchDataset([hr2], scale=2, hr_patch=16, augment=False)
    assert np.array_equal(ds2.lr[0], bicubic_downsample(hr2, 2)) and ds2.hr[0].shape == (50, 46, 3)
    img, y, x, k = ds2.crop_params(0)
    assert k == 0 and img == 0
    assert np.array_equal(D.tensor_to_image(ds2[0][1]), hr2[2 * y : 2 * y + 16, 2 * x : 2 * x + 16])
    assert np.array_equal(D.tensor_to_image(ds2[0][0]), ds2.lr[0][y : y + 8, x : x + 8])


def test_patch_dataset_deterministic_per_seed_and_index():
    imgs = [_rand_img(40, 40, s) for s in range(3)]
    a = D.PatchDataset(imgs, scale=2, hr_patch=16, seed=5, samples_per_epoch=12)
    b = D.PatchDataset(imgs, scale=2, hr_patch=16, seed=5, samples_per_epoch=12)
    c = D.PatchDataset(imgs, scale=2, hr_patch=16, seed=6, samples_per_epoch=12)
    late = b[7]  # access order must not matter
    for i in reversed(range(12)):
        b[i]
    assert all(torch.equal(x, y) for x, y in zip(a[7], late, strict=True))
    assert all(torch.equal(a[i][1], b[i][1]) for i in range(12))
    assert sum(torch.equal(a[i][1], c[i][1]) for i in range(12)) == 0
    assert not torch.equal(a[0][1], a[3][1])  # same image (0 % 3 == 3 % 3), different crop
    with pytest.raises(IndexError):
        a[12]

    # worker processes give the same samples as the main process
    loader = torch.utils.data.DataLoader(a, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([hr for _, hr in loader])
    assert torch.equal(got, torch.stack([a[i][1] for i in range(12)]))


def test_patch_dataset_errors(tmp_path):
    with pytest.raises(ConfigError, match="multiple of scale"):
        D.PatchDataset([_rand_img(40, 40)], scale=3, hr_patch=32)
    small = _save(tmp_path / "small.png", _rand_img(20, 30))
    _save(tmp_path / "big.png", _rand_img(40, 40))
    with pytest.raises(DataError) as exc:
        D.PatchDataset([tmp_path], scale=2, hr_patch=32)
    assert str(small) in str(exc.value) and "30x20" in str(exc.value)
    with pytest.warns(UserWarning, match="small.png"):
        ds = D.PatchDataset([tmp_path], scale=2, hr_patch=32, skip_bad=True)
    assert len(ds) == 1 and ds.names[0].endswith("big.png")
    (tmp_path / "zz.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="zz.png"):
        D.PatchDataset([tmp_path / "big.png", tmp_path / "zz.png"], scale=2, hr_patch=8)
    with pytest.raises(DataError, match="lr_images"):
        D.PatchDataset([_rand_img(40, 40)], scale=2, hr_patch=8, lr_images=[])
    with pytest.raises(DataError, match="expected 20x20"):
        D.PatchDataset([_rand_img(40, 40)], scale=2, hr_patch=8, lr_images=[_rand_img(10, 10)])


def test_patch_dataset_reads_folders(t91_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every T91 image is at least 78 px: nothing may be skipped at 64
        ds = D.PatchDataset([t91_dir / "HR"], scale=4, hr_patch=64, samples_per_epoch=8)
    assert len(ds.hr) == 91
    lr, hr = ds[3]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    # T91's t20.bmp is 78x78, smaller than the usual 96 px x4 patch
    with pytest.raises(DataError, match=r"t20\.bmp is 78x78"):
        D.PatchDataset([t91_dir / "HR"], scale=4, hr_patch=96)
    with pytest.warns(UserWarning, match=r"t20\.bmp"):
        assert len(D.PatchDataset([t91_dir / "HR"], scale=4, hr_patch=96, skip_bad=True).hr) == 90


# ------------------------------------------------------------------------------------------------ dihedral


def test_dihedral_group_numpy_and_torch():
    x = _rand_img(5, 7, 14)  # non-square, asymmetric: all 8 results differ
    outs = [D.dihedral(x, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    assert outs[0] is not x and np.array_equal(outs[0], x)
    assert np.array_equal(outs[4], x[:, ::-1]) and np.array_equal(outs[2], x[::-1, ::-1])
    t = torch.from_numpy(x).permute(2, 0, 1)
    batch = torch.stack([t, t.flip(0)])
    for k in range(8):
        j = D.dihedral_inverse(k)
        assert np.array_equal(D.dihedral(outs[k], j), x)
        assert outs[k].flags.c_contiguous
        tk = D.dihedral(t, k)  # CHW
        assert np.array_equal(tk.permute(1, 2, 0).numpy(), outs[k])
        assert torch.equal(D.dihedral(batch, k)[1], tk.flip(0))  # NCHW acts per image
        assert torch.equal(D.dihedral(tk, j), t)
        assert np.array_equal(D.dihedral(x[:, :, 0], k), outs[k][:, :, 0])  # HW numpy
    with pytest.raises(ValueError):
        D.dihedral(x, 8)


def test_tensor_image_round_trip():
    img = _rand_img(6, 4, 15)
    t = D.image_to_tensor(img)
    assert t.shape == (3, 6, 4) and t.dtype == torch.float32 and float(t.max()) <= 1.0
    assert np.array_equal(D.tensor_to_image(t), img)
    assert np.array_equal(D.tensor_to_image(t + 0.4 / 255), img)  # rounds to nearest
