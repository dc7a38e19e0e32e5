"""Checkpoint reading (wrappers, weights-only), strict loading with one-line errors, and atomic saving."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from sr.checkpoint import WRAPPER_KEYS, load_weights, read_checkpoint, read_state_dict, save_checkpoint
from sr.errors import CheckpointError
from sr.models import _registry

_ARCH = "_test_tiny_ckpt"


class _Tiny(nn.Module):
    def __init__(self, C: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, C, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), nn.Conv2d(C, C, 1))
        self.conv_last = nn.Conv2d(C, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.body(self.conv_first(x)))


def _convert(sd: dict) -> dict:
    """A foreign layout whose first conv is ``head.`` and last conv ``tail.`` (like EDSR-PyTorch)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            k = "conv_first." + k[len("head.") :]
        elif k.startswith("tail."):
            k = "conv_last." + k[len("tail.") :]
        out[k] = v
    return out


if _ARCH not in _registry._FAMILIES:  # the test module may be imported twice in one process

    @_registry.register_family(_ARCH, convert_state_dict=_convert)
    def _build_tiny(*, C: int = 4, scale: int = 2) -> nn.Module:
        return _Tiny(C)

    _registry.register_variant(_ARCH, _ARCH)


def _tiny(C: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _registry.build(_ARCH, C=C)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_and_wrapped_checkpoints(tmp_path):
    src, ema = _tiny(seed=1), _tiny(seed=2)
    plain = tmp_path / "plain.pth"
    torch.save(src.state_dict(), plain)
    assert _same(load_weights(_tiny(seed=9), plain, arch=_ARCH), src)

    # BasicSR-style: both params and params_ema -> EMA wins unless key= asks for params
    both = tmp_path / "both.pth"
    torch.save({"params": src.state_dict(), "params_ema": ema.state_dict(), "iter": 7}, both)
    assert _same(load_weights(_tiny(seed=9), both, arch=_ARCH), ema)
    assert _same(load_weights(_tiny(seed=9), both, arch=_ARCH, key="params"), src)
    assert torch.equal(read_state_dict(both, key="params")["conv_first.weight"], src.conv_first.weight)
    with pytest.raises(CheckpointError, match="no entry 'ema'"):
        read_state_dict(both, key="ema")

    # nested wrappers and a DataParallel 'module.' prefix
    nested = tmp_path / "nested.pth"
    dp = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": {"model": dp}, "epoch": 3}, nested)
    assert _same(load_weights(_tiny(seed=9), nested, arch=_ARCH), src)
    assert WRAPPER_KEYS[0] == "params_ema"

    # an in-memory state dict or loaded checkpoint works too, unwrapped the same way
    assert _same(load_weights(_tiny(seed=9), src.state_dict(), arch=_ARCH), src)
    loaded = read_checkpoint(both)
    assert _same(load_weights(_tiny(seed=9), loaded, arch=_ARCH), ema)
    assert _same(load_weights(_tiny(seed=9), loaded, arch=_ARCH, key="params"), src)


def test_family_converter_maps_foreign_prefixes(tmp_path):
    src = _tiny(seed=3)
    foreign = {}
    for k, v in src.state_dict().items():
        k = k.replace("conv_first.", "head.").replace("conv_last.", "tail.")
        foreign[k] = v
    assert "head.weight" in foreign and "conv_first.weight" not in foreign
    path = tmp_path / "foreign.pth"
    torch.save(foreign, path)
    assert _same(load_weights(_tiny(seed=9), path, arch=_ARCH), src)


def test_wrong_architecture_is_one_line_naming_keys(tmp_path):
    path = tmp_path / "c8.pth"
    sd = _tiny(C=8).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["conv_last.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_weights(_tiny(C=4), path, arch=_ARCH)
    msg = str(exc.value)
    print(msg)
    assert "\n" not in msg and _ARCH in msg and str(path) in msg
    assert "conv_first.weight (checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3))" in msg
    assert "missing conv_last.bias" in msg and "unexpected extra.weight" in msg
    assert "--arch" in msg and "--set" in msg
    # the model was not touched by the failed load
    fresh = _tiny(C=4)
    target = _tiny(C=4)
    with pytest.raises(CheckpointError):
        load_weights(target, path, arch=_ARCH)
    assert _same(target, fresh)


def test_missing_and_non_checkpoint_files(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(missing)
    assert str(exc.value) == f"checkpoint not found: {missing}; pass the path of a .pth file"

    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(junk)
    print(exc.value)
    assert f"{junk} (not a PyTorch checkpoint" in str(exc.value) and "\n" not in str(exc.value)

    good = tmp_path / "good.pth"
    torch.save({"params": _tiny().state_dict(), "big": torch.zeros(256, 256)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth \(truncated or corrupt archive.*re-download"):
        read_state_dict(cut)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        read_state_dict(empty)

    with pytest.raises(CheckpointError, match="folder"):
        read_state_dict(tmp_path)

    # a pickle carrying code (an arbitrary class) is refused by weights_only, never executed
    code = tmp_path / "code.pth"
    torch.save({"params": _tiny().state_dict(), "cfg": _Opaque()}, code)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(code)
    print(exc.value)
    assert "test_checkpoint._Opaque" in str(exc.value) and "model.state_dict()" in str(exc.value)
    assert "\n" not in str(exc.value)

    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(tensor_only)
    not_tensors = tmp_path / "cfg.pth"
    torch.save({"lr": 1e-4, "iters": 10}, not_tensors)
    with pytest.raises(CheckpointError, match="entry 'lr' is float"):
        read_state_dict(not_tensors)


class _Opaque:
    pass


class _SystemCall:
    """Unpickles as ``os.system(command)``: a real code-executing payload, as a crafted checkpoint would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_os_system_payload_is_refused_never_run(tmp_path, zipfile, recwarn):
    """Item 5: torch 2.13 words it "unsupported GLOBAL posix.system whose module posix is blocked"; the message
    still names the call, says nothing ran and gives a fix, with no torch warning ahead of it."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"params": _SystemCall(f"touch {marker}")}, evil, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(evil)
    msg = str(exc.value)
    print(msg)
    assert not marker.exists(), "the payload ran"
    assert "\n" not in msg and str(evil) in msg
    assert "system" in msg and "nothing ran" in msg
    assert "; do not load files from untrusted sources" in msg and "torch.save(model.state_dict(), path)" in msg
    assert "Re-running" not in msg and "weights_only` set to `False`" not in msg  # torch's own (wrong) advice
    assert not [w for w in recwarn if "torch" in str(w.filename)]


class _Exploding:
    """Pickling fails part-way through the save, like a crash mid-write."""

    def __reduce__(self):
        raise pickle.PicklingError("simulated crash during save")


def test_atomic_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "run" / "last.pth"
    first = {"params": _tiny(seed=4).state_dict(), "iter": 100}
    assert save_checkpoint(path, first) == path
    before = path.read_bytes()
    # the failure comes after the temporary file was opened in the same folder
    with pytest.raises(pickle.PicklingError):
        save_checkpoint(path, {"params": _tiny(seed=6).state_dict(), "z": _Exploding()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temp file left behind

    second = {"params": _tiny(seed=5).state_dict(), "iter": 200}
    save_checkpoint(path, second)
    back = read_checkpoint(path)
    assert back["iter"] == 200 and torch.equal(
        back["params"]["conv_first.weight"], second["params"]["conv_first.weight"]
    )


def test_published_imdn_x2_loads(imdn_x2_weights):
    from sr import models

    net = load_weights(models.build("imdn", scale=2), imdn_x2_weights, arch="imdn")
    sd = read_state_dict(imdn_x2_weights)
    assert torch.equal(net.state_dict()["fea_conv.weight"], sd["module.fea_conv.weight"])
    with pytest.raises(CheckpointError, match=r"upsampler\.0\.weight \(checkpoint \(12, 64, 3, 3\) vs model \(27"):
        load_weights(models.build("imdn", scale=3), imdn_x2_weights, arch="imdn")
