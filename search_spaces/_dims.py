"""Search dimensions of a job spec: a numeric :class:`Range`, a categorical :class:`Choice`, or a fixed value."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from search_spaces._errors import KeyedError
from search_spaces._values import Number, Scalar


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)


class Range(SpecModel):
    """A searched numeric dimension; integer when ``low``, ``high`` (and ``step``) are integers, else float."""

    low: Number = Field(description="smallest value (inclusive)")
    high: Number = Field(description="largest value (inclusive)")
    step: Number | None = Field(None, description="grid step (integers: default 1); not with log")
    log: bool = Field(False, description="sample uniformly in log space; needs low > 0")

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high}); swap them")
        if self.step is not None and self.step <= 0:
            raise KeyedError("step", f"step must be > 0, got {self.step}; use a positive step")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples a grid or a log scale); drop one")
        if self.log and self.low <= 0:
            raise KeyedError("low", f"log scale needs low > 0, got {self.low}; raise low or drop log")
        if self.is_int and self.step is not None and (self.high - self.low) % self.step:
            raise KeyedError(
                "high",
                f"high - low ({self.high - self.low}) is not a multiple of step ({self.step}); adjust high",
            )
        return self

    @property
    def is_int(self) -> bool:
        """True when every bound (and the step) is an int: the dimension is sampled as integers."""
        return all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)


class Choice(SpecModel):
    """A searched categorical dimension."""

    choices: list[Scalar] = Field(min_length=1, description="the values to choose from")


def _dim_shape(value: Any) -> Any:
    if isinstance(value, dict | Range | Choice | bool | int | float | str):
        return value
    raise ValueError(
        f"expected a fixed value, {{low, high[, step][, log]}} or {{choices: [...]}}, got {value!r}; write one of those"
    )


def _dim_tag(value: Any) -> str:
    if isinstance(value, Range):
        return "range"
    if isinstance(value, Choice):
        return "choice"
    if isinstance(value, dict):
        return "choice" if "choices" in value else "range"
    return "fixed"


def _num_shape(value: Any) -> Any:
    if isinstance(value, dict | Range) or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError(f"expected a number or {{low, high[, log]}}, got {value!r}; write one of those")


# A knob dimension: fixed value, numeric range or categorical choice.
Dim = Annotated[
    Annotated[Range, Tag("range")] | Annotated[Choice, Tag("choice")] | Annotated[Scalar, Tag("fixed")],
    Discriminator(_dim_tag),
    BeforeValidator(_dim_shape),
]
# A numeric dimension: fixed number or range (the KD weights and learning rate).
NumDim = Annotated[
    Annotated[Range, Tag("range")] | Annotated[float, Tag("fixed")],
    Discriminator(lambda v: "range" if isinstance(v, dict | Range) else "fixed"),
    BeforeValidator(_num_shape),
]
