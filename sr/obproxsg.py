"""OBProx-SG, the optimizer of CDISM stage 1 (L1-regularised fine-tuning; used by :mod:`sr.prune`).

Papers: Jiang et al., "Compressing Deep Image Super-resolution Models" (arXiv 2401.00523; code
``Pikapi22/SRModelCompression``) and Chen et al., "Orthant Based Proximal Stochastic Gradient Method for
l1-Regularized Optimization" (ECML-PKDD 2020; code ``tianyic/obproxsg``).

The penalty ``lambda_ * ||theta||_1`` is applied by the optimizer to every tensor it is given, never through the
loss. Training alternates between two phases, decided by the optimizer's own step counter:

- Prox-SG: ``z = x - lr * g``, ``x <- sign(z) * max(|z| - lr * lambda_, 0)`` (soft thresholding).
- Orthant: ``zeta = sign(x)``; ``x_hat = x - lr * (g + lambda_ * zeta)`` on the non-zeros; then every entry with
  ``x_hat * zeta <= epsilon`` is set to 0. Zeros have ``zeta = 0`` and stay 0, so this phase never revives one.
  The comparison follows ``tianyic/obproxsg`` (``project`` keeps ``x_hat * zeta > eps``); its default ``eps``
  is 0.0, CDISM's REFERENCE value is 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from sr.errors import CheckpointError, ConfigError

__all__ = ["OBProxSG", "Phase"]

Phase = Literal["prox", "orthant"]


# --------------------------------------------------------------------------------------------------- optimizer


class OBProxSG(torch.optim.Optimizer):
    """OBProx-SG for ``min f(x) + lambda_ * ||x||_1`` over every tensor it is given.

    The schedule counts epochs of ``batches_per_epoch`` optimizer steps: ``epoch = steps // batches_per_epoch``.
    With ``no_epochs=None`` (No = infinity) the first ``np_epochs`` epochs take Prox-SG steps and every later
    step is an Orthant step. With a finite ``no_epochs`` the phases alternate as in ``tianyic/obproxsg``: the
    step is Prox-SG iff ``epoch % (np_epochs + no_epochs) < np_epochs`` (Np Prox epochs, No Orthant epochs,
    repeat).

    ``quirk_epoch_in_samples`` reproduces ``Pikapi22/SRModelCompression``: it passes the optimizer
    ``epochSize = batches_per_epoch * batch_size`` (samples per epoch, global batch) while the optimizer counts
    one tick per step, so an "epoch" lasts ``batch_size`` real epochs and the switch lands at
    ``np_epochs * batches_per_epoch * batch_size`` steps - past the end of their runs, so their Orthant phase
    never starts.

    The learning rate is read from ``group["lr"]`` at every step, so LR schedulers work. ``lambda_``,
    ``epsilon`` and ``weight_decay`` are per-group options too (e.g. ``lambda_=0`` for a group to leave
    unpenalised). ``weight_decay`` adds ``weight_decay * x`` to the gradient (plain L2, not in the reference).
    Parameters whose ``grad`` is ``None`` are skipped, as in the reference.

    Args:
        params: tensors or param groups.
        lr: step size (alpha).
        lambda_: L1 weight.
        epsilon: Orthant projection threshold (>= 0).
        np_epochs: Prox-SG epochs per cycle (Np, >= 0; 0 starts in the Orthant phase).
        batches_per_epoch: optimizer steps per real epoch.
        no_epochs: Orthant epochs per cycle (No, >= 1); ``None`` means infinity.
        quirk_epoch_in_samples: count epochs in samples like the authors' code (needs ``batch_size``).
        batch_size: global batch size; only read by the quirk.
        weight_decay: L2 coefficient added to the gradient.
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        lambda_: float = 1e-4,
        epsilon: float = 1e-4,
        np_epochs: int,
        batches_per_epoch: int,
        no_epochs: int | None = None,
        quirk_epoch_in_samples: bool = False,
        batch_size: int | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ConfigError(f"OBProxSG lr must be >= 0, got {lr!r}; pass a non-negative learning rate")
        if not lambda_ >= 0.0:
            raise ConfigError(f"OBProxSG lambda_ must be >= 0, got {lambda_!r}; pass a non-negative L1 weight")
        if not epsilon >= 0.0:
            raise ConfigError(f"OBProxSG epsilon must be >= 0, got {epsilon!r}; pass e.g. 1e-4")
        if not weight_decay >= 0.0:
            raise ConfigError(f"OBProxSG weight_decay must be >= 0, got {weight_decay!r}; pass 0 or more")
        if not isinstance(np_epochs, int) or np_epochs < 0:
            raise ConfigError(f"OBProxSG np_epochs must be an integer >= 0, got {np_epochs!r}")
        if not isinstance(batches_per_epoch, int) or batches_per_epoch < 1:
            raise ConfigError(f"OBProxSG batches_per_epoch must be an integer >= 1, got {batches_per_epoch!r}")
        if no_epochs is not None and (not isinstance(no_epochs, int) or no_epochs < 1):
            raise ConfigError(f"OBProxSG no_epochs must be an integer >= 1 or None (infinity), got {no_epochs!r}")
        if quirk_epoch_in_samples and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(
                f"quirk_epoch_in_samples needs the global batch_size (an integer >= 1), got {batch_size!r}; pass it"
            )
        defaults = dict(lr=lr, lambda_=lambda_, epsilon=epsilon, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.np_epochs = np_epochs
        self.no_epochs = no_epochs
        self.batches_per_epoch = batches_per_epoch
        self.quirk_epoch_in_samples = quirk_epoch_in_samples
        self.batch_size = batch_size
        self._steps = 0

    # ----------------------------------------------------------------------------------------- schedule
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps that make one schedule epoch (``batch_size`` times more under the quirk)."""
        if self.quirk_epoch_in_samples:
            assert self.batch_size is not None
            return self.batches_per_epoch * self.batch_size
        return self.batches_per_epoch

    @property
    def steps(self) -> int:
        """Number of ``step()`` calls made (restored by ``load_state_dict``)."""
        return self._steps

    def epoch_at(self, step: int) -> int:
        """Schedule epoch of the step with 0-based index ``step``."""
        return step // self.steps_per_epoch

    def phase_at(self, step: int) -> Phase:
        """Phase of the step with 0-based index ``step``."""
        epoch = self.epoch_at(step)
        if self.no_epochs is None:
            return "prox" if epoch < self.np_epochs else "orthant"
        return "prox" if epoch % (self.np_epochs + self.no_epochs) < self.np_epochs else "orthant"

    @property
    def epoch(self) -> int:
        """Schedule epoch of the next step."""
        return self.epoch_at(self._steps)

    @property
    def phase(self) -> Phase:
        """Phase the next ``step()`` takes: ``'prox'`` or ``'orthant'``."""
        return self.phase_at(self._steps)

    @property
    def switch_step(self) -> int:
        """0-based index of the first Orthant step (``np_epochs * steps_per_epoch``)."""
        return self.np_epochs * self.steps_per_epoch

    # ----------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Prox-SG or Orthant step (see the class docstring), then advance the step counter."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        orthant = self.phase == "orthant"
        for group in self.param_groups:
            lr = float(group["lr"])
            lam = float(group["lambda_"])
            eps = float(group["epsilon"])
            wd = float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("OBProxSG does not support sparse gradients; use dense parameters")
                g = p.grad if wd == 0.0 else p.grad.add(p, alpha=wd)
                if orthant:
                    _orthant_step_(p, g, lr=lr, lambda_=lam, epsilon=eps)
                else:
                    _prox_step_(p, g, lr=lr, lambda_=lam)
        self._steps += 1
        return loss

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state plus ``'obproxsg'``: the step counter and the schedule it ran with."""
        sd = super().state_dict()
        sd["obproxsg"] = {
            "steps": self._steps,
            "np_epochs": self.np_epochs,
            "no_epochs": self.no_epochs,
            "batches_per_epoch": self.batches_per_epoch,
            "quirk_epoch_in_samples": self.quirk_epoch_in_samples,
            "batch_size": self.batch_size,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore groups (lr included) and the step counter; the schedule stays the constructor's."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("obproxsg", None)
        if not isinstance(extra, dict) or "steps" not in extra:
            raise CheckpointError(
                "optimizer state has no OBProx-SG step counter; resume from a state written by OBProxSG"
            )
        super().load_state_dict(state_dict)
        self._steps = int(extra["steps"])


def _prox_step_(p: torch.Tensor, g: torch.Tensor, *, lr: float, lambda_: float) -> None:
    z = p - lr * g
    p.copy_(z.sign() * (z.abs() - lr * lambda_).clamp_min_(0.0))


def _orthant_step_(p: torch.Tensor, g: torch.Tensor, *, lr: float, lambda_: float, epsilon: float) -> None:
    zeta = p.sign()
    x_hat = p - lr * (g + lambda_ * zeta)
    # zeta = 0 at zeros, so x_hat * zeta = 0 <= epsilon there: zeros stay zero whatever their gradient.
    p.copy_(torch.where(x_hat * zeta > epsilon, x_hat, torch.zeros_like(x_hat)))
