"""Checkpoints that carry their architecture (arch, knobs, scale, pixel range), read back weights-only; knobs
given by hand are checked against them; a checkpoint of another scale names the scale it implies; tags are unique."""

from __future__ import annotations

import pytest
import torch

from sr.arch_record import ARCH_KEY
from sr.checkpoint import arch_record, load_checkpoint_model, resolve_arch
from sr.errors import UserError
from sr.models import arch_tag, build, list_variants, official_pixel_range
from sr.stages import save_weights


def test_saved_weights_carry_their_architecture_and_load_weights_only(tmp_path):
    torch.manual_seed(0)
    model = build("edsr_mini", C=8, B=1, res_scale=1.0, scale=3)  # res_scale differs from the variant's 2.0
    path = save_weights(tmp_path / "w.pth", model)
    raw = torch.load(path, weights_only=True)  # plain scalars next to the tensors: no pickled code
    assert set(raw) == {"params", ARCH_KEY}
    rec = arch_record(path)
    assert rec is not None and rec.arch == "edsr_mini" and rec.scale == 3 and rec.pixel_range == 1.0
    assert rec.knobs["C"] == 8 and rec.knobs["res_scale"] == 1.0
    back, rec2 = load_checkpoint_model(path)  # no arch, no knobs: all from the record
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(back(x), model.eval()(x))
    assert rec2 == rec


def test_knobs_given_by_hand_must_agree_with_the_checkpoint(tmp_path):
    path = save_weights(tmp_path / "w.pth", build("edsr_mini", C=8, B=1, scale=2))
    rec = arch_record(path)
    # agreeing values (and another variant of the family whose own knobs agree) are accepted
    assert resolve_arch(rec, arch="edsr_mini", knobs={"C": 8}, scale=2) == rec
    cases = [
        ({"knobs": {"C": 16}}, "--set C=16"),
        ({"scale": 4}, "pass --scale 2"),
        ({"arch": "imdn"}, "--arch imdn"),
        ({"arch": "edsr_baseline"}, "--arch edsr_baseline"),  # its C=64, B=16 contradict C=8, B=1
    ]
    for kwargs, needle in cases:
        with pytest.raises(UserError) as err:
            load_checkpoint_model(path, **kwargs)
        assert "\n" not in str(err.value) and needle in str(err.value), (kwargs, str(err.value))


def test_a_published_checkpoint_of_another_scale_names_the_scale(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "official_x3.pth"
    torch.save(build("edsr_mini", C=8, B=1, scale=3).state_dict(), path)  # no record, as published
    with pytest.raises(UserError) as err:
        load_checkpoint_model(path)
    assert "pass --arch" in str(err.value)
    with pytest.raises(UserError) as err:
        load_checkpoint_model(path, arch="edsr_mini", knobs={"C": 8, "B": 1}, scale=2)
    msg = str(err.value)
    assert "\n" not in msg and "--scale 3" in msg and "x3" in msg, msg
    model, rec = load_checkpoint_model(path, arch="edsr_mini", knobs={"C": 8, "B": 1}, scale=3)
    assert rec.scale == 3 and rec.pixel_range == official_pixel_range("edsr_mini") == 1.0


def test_rfdn_records_the_0_255_range_of_its_official_weights(tmp_path):
    assert official_pixel_range("e_rfdn") == 255.0 and official_pixel_range("imdn") == 1.0
    path = tmp_path / "RFDN_like.pth"
    torch.save(build("e_rfdn", scale=4).state_dict(), path)  # official names, no record
    _, rec = load_checkpoint_model(path, arch="e_rfdn", scale=4)
    assert rec.pixel_range == 255.0
    # a student srcompress trained is in [0, 1], whatever its family's official weights expect
    trained = save_weights(tmp_path / "student.pth", build("e_rfdn", C=16, B=1, scale=4))
    assert arch_record(trained).pixel_range == 1.0


def test_arch_tags_are_unique():
    assert arch_tag("e_rfdn", scale=4) != arch_tag("rfdn", C=50, B=4, scale=4)
    assert arch_tag("e_rfdn", scale=4) == arch_tag("rfdn", C=50, B=4, attention="esa", scale=4)  # same model
    # every registered variant that builds a different network has its own tag
    tags = {v: arch_tag(v, scale=2) for v in list_variants()}
    assert len(set(tags.values())) == len(tags), tags
    assert arch_tag("edsr_mini", C=16, B=8) == "edsr_C16L1B8_x2"  # plain names unchanged
