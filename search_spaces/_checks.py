"""Registry-aware checks of a job spec: architecture names and knobs against ``sr.models``, and CSD's rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search_spaces._dims import Choice, Range
from search_spaces._errors import KeyedError

if TYPE_CHECKING:
    from search_spaces._schema import JobSpec


def _knob_kind_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # no default to compare with


def _check_knob(key: str, default: Any, dim: Any) -> None:
    kind = type(default).__name__
    if isinstance(dim, Range):
        if isinstance(default, bool | str):
            raise KeyedError(key, f"takes {kind} values, not a range; use a fixed value or {{choices: [...]}}")
        if isinstance(default, int) and not dim.is_int:
            raise KeyedError(key, "is an integer knob; use integer low, high and step")
        return
    values = dim.choices if isinstance(dim, Choice) else [dim]
    for v in values:
        if default is not None and not _knob_kind_ok(default, v):
            raise KeyedError(key, f"takes {kind} values, got {v!r}; use a {kind}")


def check_models(spec: JobSpec) -> None:
    """Architecture names and knobs against the ``sr.models`` registry."""
    import sr.models as models  # deferred: sr.models imports torch; `import search_spaces` stays light

    variants = models.list_variants()
    archs = [("teacher.arch", spec.teacher.arch), ("student.arch", spec.student.arch)]
    if spec.teacher.fallback.arch is not None:
        archs.append(("teacher.fallback.arch", spec.teacher.fallback.arch))
    for key, arch in archs:
        if arch not in variants:
            raise KeyedError(key, f"unknown architecture {arch!r} (valid: {', '.join(variants)}); fix the name")

    def knobs_of(arch: str) -> dict[str, Any]:
        return dict(models.get_family(models.family_of(arch)).knobs)

    for prefix, arch, given in (
        ("teacher.set", spec.teacher.arch, spec.teacher.set),
        ("student.space", spec.student.arch, spec.student.space),
    ):
        knobs = knobs_of(arch)
        family = models.family_of(arch)
        for name, dim in given.items():
            key = f"{prefix}.{name}"
            if name == "scale":
                raise KeyedError(key, "the scale comes from data.scale; drop it here")
            if name not in knobs:
                valid = ", ".join(k for k in knobs if k != "scale")
                raise KeyedError(key, f"unknown knob for {arch} (family {family}; valid: {valid}); fix the name")
            _check_knob(key, knobs[name], dim)

    # SwinIR splits C over the attention heads, so every sampled C must be a multiple of heads.
    if models.family_of(spec.student.arch) == "swinir":
        space = spec.student.space
        heads = space.get("heads", models.resolve_knobs(spec.student.arch).get("heads"))
        c_dim = space.get("C")
        if isinstance(heads, int) and not isinstance(heads, bool) and c_dim is not None:
            cs = (
                [c_dim.low, c_dim.step or 1]
                if isinstance(c_dim, Range)
                else c_dim.choices
                if isinstance(c_dim, Choice)
                else [c_dim]
            )
            if any(isinstance(c, int) and c % heads for c in cs):
                raise KeyedError(
                    "student.space.C",
                    f"SwinIR needs C to be a multiple of heads ({heads}); use values (low and step) divisible "
                    f"by {heads}",
                )


def check_csd(spec: JobSpec) -> None:
    """``student.method: csd``: an EDSR student, widths that slice whole channels, VGG weights for lambda_c > 0."""
    if spec.student.method != "csd":
        if spec.csd is not None:
            raise KeyedError("csd", "is only read with student.method: csd; drop it or set the method")
        return
    import sr.models as models  # deferred: sr.models imports torch; `import search_spaces` stays light

    arch = spec.student.arch
    if arch in models.list_variants() and models.family_of(arch) != "edsr":
        raise KeyedError(
            "student.method",
            f"csd slices an EDSR's channels, but {arch} is family {models.family_of(arch)}; use an edsr variant "
            "(e.g. edsr_baseline) or method: kd",
        )
    csd = spec.csd_settings
    # CSD distils the shared model into its own slice: the external teacher is only the report's reference.
    for key, on, fix in (
        ("prune.enabled", spec.prune.runs, "set prune.enabled: false"),
        ("data.cache.enabled", spec.data.cache.enabled, "set data.cache.enabled: false"),
        ("search.enqueue_paper_rule", spec.search.enqueue_paper_rule, "set search.enqueue_paper_rule: false"),
    ):
        if on:
            raise KeyedError(key, f"CSD does not use the teacher's pruning, cache or paper-rule seed; {fix}")
    widths = csd.values("width")
    if isinstance(csd.width, Range):
        raise KeyedError("csd.width", "must be a fixed value or {choices: [...]} (w*C must be whole); list them")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < csd.teacher_width:
            raise KeyedError(
                "csd.width", f"{w!r} must be a number in (0, teacher_width={csd.teacher_width}); e.g. 0.25"
            )
    c_dim = spec.student.space.get("C", models.resolve_knobs(arch).get("C") if arch in models.list_variants() else 0)
    if isinstance(c_dim, Range):
        cs = list(range(int(c_dim.low), int(c_dim.high) + 1, int(c_dim.step or 1)))
    else:
        cs = list(c_dim.choices) if isinstance(c_dim, Choice) else [c_dim]
    for c in cs:
        for w in (*widths, csd.teacher_width):
            if isinstance(c, int) and abs(w * c - round(w * c)) > 1e-6:
                raise KeyedError(
                    "csd.width", f"width {w} of C={c} gives {w * c:g} channels, not a whole number; pick w = k/{c}"
                )
    lambdas = csd.values("lambda_c")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in lambdas):
        raise KeyedError("csd.lambda_c", f"values {lambdas} must be numbers >= 0; e.g. 200, or 0 to disable CL")
    if max(lambdas) > 0 and csd.vgg_weights is None:
        raise KeyedError(
            "csd.vgg_weights",
            "lambda_c > 0 needs VGG19 weights for the contrastive loss; set csd.vgg_weights to torchvision's "
            "vgg19-dcbb9e9d.pth, or lambda_c: 0",
        )
