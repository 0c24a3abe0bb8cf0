"""How to code a video: one frozen options object, validated once, taken by every coding call."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from elastictok.coding.prediction import PREDICTED_METRICS
from elastictok.coding.search import SEARCHES, tolerance_for
from elastictok.coding.target import Target, default_target
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig
from elastictok.model.tokens import is_context_window

# Mean absolute change in [-1, 1] pixels between the last frame of a block and the first of the next
# that counts as a hard cut (about 38 grey levels); continuous footage stays far below it.
DEFAULT_CUT_THRESHOLD = 0.3
# What rate control minimises per block: minus PSNR (maximising mean PSNR) or MSE.
OBJECTIVES = ("psnr", "mse")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CodingOptions:
    """How each block's token count is chosen, and what context it is coded against.

    The count comes from one of three modes: a search for the fewest tokens meeting ``target`` (the
    default; None: the target the model declares, else the official block MSE 0.003; ``search`` None:
    ``predict`` where the model has a token-count predictor and the metric is MSE or PSNR, else
    ``fast``), a fixed
    ``num_tokens`` in every block, or an average ``budget`` of tokens per block
    spread over the video by rate control. ``min_tokens`` / ``max_tokens`` cap the search and the
    budget (default: the model's minimum and every token). ``context_blocks`` bounds how many earlier
    blocks each block attends to (default: as many as the model saw in training). A keyframe resets
    the context every ``keyframe_interval`` blocks or where the mean pixel change across a block
    boundary exceeds ``cut_threshold`` (None: no cut detection). ``speculation`` is how many levels
    of the ``fast`` search are scored per batched pass (None: measured on a GPU, 1 elsewhere).
    ``tolerance`` lets the search stop once a passing count has a failing count less than this
    fraction of the block's tokens below it (None: the search's default, ``DEFAULT_TOLERANCE``; 0:
    exact); it does not apply to ``grid``, nor without a search.
    """

    target: Target | None = None
    search: str | None = None
    num_tokens: int | None = None
    budget: float | None = None
    budget_objective: str = "psnr"
    min_tokens: int | None = None
    max_tokens: int | None = None
    context_blocks: int | None = None
    keyframe_interval: int | None = None
    cut_threshold: float | None = None
    speculation: int | None = None
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.target is not None and not isinstance(self.target, Target):
            raise TypeError(f"expected target to be a Target, got {type(self.target).__name__}")
        if self.search is not None and self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; expected one of {SEARCHES}")
        if self.num_tokens is not None and self.budget is not None:
            raise ValueError("give either --num-tokens or --budget, not both")
        if self.num_tokens is not None and not (_is_int(self.num_tokens) and self.num_tokens >= 1):
            raise ValueError(f"expected --num-tokens to be an int >= 1, got {self.num_tokens!r}")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"expected --budget to be a positive number of tokens per block, got {self.budget!r}")
        if self.budget_objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.budget_objective!r}; expected one of {OBJECTIVES}")
        for name in ("min_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"expected --{name.replace('_', '-')} to be an int >= 1, got {value!r}")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"expected 1 <= min tokens ({self.min_tokens}) <= max tokens ({self.max_tokens})")
        if not is_context_window(self.context_blocks):
            raise ValueError(f"expected context_blocks >= 1, got {self.context_blocks}")
        if self.keyframe_interval is not None and not (_is_int(self.keyframe_interval) and self.keyframe_interval >= 1):
            raise ValueError(f"expected keyframe_interval >= 1, got {self.keyframe_interval}")
        if self.cut_threshold is not None and not (math.isfinite(self.cut_threshold) and self.cut_threshold >= 0):
            raise ValueError(f"expected --cut-threshold to be a finite number >= 0, got {self.cut_threshold!r}")
        if self.speculation is not None and not (_is_int(self.speculation) and 1 <= self.speculation <= 8):
            raise ValueError(f"expected a speculation depth in [1, 8], got {self.speculation}")
        if self.tolerance is not None:
            tolerance_for(self.search or "fast", self.tolerance)  # raises on a bad value, or with grid
            if self.mode != "adaptive":
                raise ValueError("--tolerance is for a quality target's search, not with --num-tokens or --budget")

    @property
    def search_tolerance(self) -> float:
        """The tolerance the search runs with (its default where none was given)."""
        return tolerance_for(self.search or "fast", self.tolerance)

    @property
    def mode(self) -> str:
        """"adaptive" (search each block), "fixed" (num_tokens everywhere) or "budget" (rate control)."""
        if self.budget is not None:
            return "budget"
        return "adaptive" if self.num_tokens is None else "fixed"

    def bounds(self, config: ElasticTokConfig, frame_size: tuple[int, int]) -> tuple[int, int, int]:
        """(lo, hi, T) for this frame size, refusing settings the model cannot meet there."""
        lo, hi, T = config.token_bounds(frame_size, self.min_tokens, self.max_tokens)
        if self.num_tokens is not None and not 1 <= self.num_tokens <= T:
            raise ValueError(f"expected --num-tokens in [1, {T}], got {self.num_tokens}")
        if self.budget is not None and self.budget < lo:
            raise ValueError(f"a budget of {self.budget} tokens per block is below the minimum of {lo}")
        return lo, hi, T

    def for_model(self, model: ElasticTok) -> CodingOptions:
        """These options with the model's defaults filled in where none was given (its declared target,
        its search and trained context window), so a token file records what it was coded with."""
        target = self.target or default_target(model.config)
        return replace(self, target=target, search=search_for(self.search, model, target, self.mode),
                       context_blocks=model.config.context_window(self.context_blocks))

    def settings(self) -> dict[str, Any]:
        """The options as recorded in ``stats.json`` and ``.etok`` headers."""
        if self.mode == "budget":
            mode: dict[str, Any] = {"mode": "budget", "budget": self.budget, "objective": self.budget_objective}
        elif self.mode == "fixed":
            mode = {"mode": "fixed", "num_tokens": self.num_tokens}
        else:
            target = self.target or Target()
            mode = {"mode": "adaptive", "metric": target.metric, "threshold": target.threshold,
                    "search": self.search or "fast",
                    "tolerance": self.search_tolerance}
        return mode | {
            "min_tokens": self.min_tokens, "max_tokens": self.max_tokens, "context_blocks": self.context_blocks,
            "keyframe_interval": self.keyframe_interval, "cut_threshold": self.cut_threshold,
        }


def search_for(search: str | None, model: ElasticTok, target: Target, mode: str = "adaptive") -> str | None:
    """The search a model runs: ``search``, or by default ``predict`` where the model has a predictor
    for this metric, else ``fast``; refuses ``predict`` where it cannot run."""
    has_predictor = getattr(model, "predictor", None) is not None
    if search is None:
        return "predict" if has_predictor and target.metric in PREDICTED_METRICS else "fast"
    if search == "predict" and mode == "adaptive":
        if not has_predictor:
            raise ValueError("--search predict needs a model with a token-count predictor "
                             "(make one with elastictok train-predictor)")
        if target.metric not in PREDICTED_METRICS:
            raise ValueError(f"--search predict predicts MSE and PSNR, not {target.metric}: use --search fast")
    return search
