"""The network configuration: one dataclass and its named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from elastictok.model.tokens import is_context_window

BOTTLENECKS = ("fsq", "vae")
ROPES = ("1d", "axial")
CONDITIONINGS = ("mask", "none")


@dataclass
class ElasticTokConfig:
    """Everything needed to build an :class:`~elastictok.model.ElasticTok` network.

    ``frame_size`` is the frame size the model was trained on and the default for inputs. With the
    official ``rope="1d"`` the network only makes sense at that size (positions are one flat token
    index); with ``rope="axial"`` it accepts any frame size that is a multiple of the patch size.
    """

    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_encoder_layers: int = 10
    num_decoder_layers: int = 10
    num_heads: int = 8
    patch_size: tuple[int, int, int] = (1, 8, 8)
    frames_per_block: int = 4
    frame_size: tuple[int, int] = (256, 256)
    bottleneck: str = "fsq"
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    vae_latent_dim: int = 8
    # The official min_toks is max_toks / 16; a fraction keeps it meaningful at any frame size.
    min_token_fraction: float = 1 / 16
    rope: str = "1d"
    rope_theta: float = 5e7
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # "mask": the official encoder, told which tokens will be kept. "none": the paper's
    # unconditioned ablation, which encodes once for every token count.
    encoder_conditioning: str = "mask"
    # Blocks a training sequence held, the current one included (the official inference scripts use
    # 4). Attending to more earlier blocks than it saw in training degrades a model: the default
    # context window (library and CLI) is max_context_blocks - 1 earlier blocks.
    max_context_blocks: int = 4
    # The quality target the model is meant to run at, (metric, threshold), e.g. ("psnr", 25.0); coding
    # uses it when none is given. None: the official block MSE 0.003.
    default_target: tuple[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; coerce back so a round trip is exact.
        self.patch_size = tuple(int(v) for v in self.patch_size)
        self.frame_size = tuple(int(v) for v in self.frame_size)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        if self.default_target is not None:
            self.default_target = tuple(self.default_target)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid ElasticTokConfig: {msg}")

        need(self.bottleneck in BOTTLENECKS, f"bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        need(self.rope in ROPES, f"rope must be one of {ROPES}, got {self.rope!r}")
        need(
            self.encoder_conditioning in CONDITIONINGS,
            f"encoder_conditioning must be one of {CONDITIONINGS}, got {self.encoder_conditioning!r}",
        )
        need(len(self.patch_size) == 3, f"patch_size must be (t, h, w), got {self.patch_size}")
        need(len(self.frame_size) == 2, f"frame_size must be (height, width), got {self.frame_size}")
        need(self.hidden_size % self.num_heads == 0, "hidden_size must be divisible by num_heads")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        need(self.frames_per_block % self.patch_size[0] == 0, "frames_per_block must be a multiple of patch_size[0]")
        need(
            self.frame_size[0] % self.patch_size[1] == 0 and self.frame_size[1] % self.patch_size[2] == 0,
            f"frame_size {self.frame_size} must be a multiple of the patch size {self.patch_size[1:]}",
        )
        need(0 < self.min_token_fraction <= 1, "min_token_fraction must be in (0, 1]")
        target = self.default_target
        need(
            target is None or (len(target) == 2 and isinstance(target[0], str) and isinstance(target[1], (int, float))),
            f"default_target must be null or [metric, threshold], got {target!r}",
        )
        if self.bottleneck == "fsq":
            need(len(self.fsq_levels) > 0 and all(v >= 2 for v in self.fsq_levels), "fsq_levels must be >= 2 each")
        if self.rope == "axial":
            need(self.head_dim % 8 == 0, f"axial RoPE needs head_dim divisible by 8, got {self.head_dim}")

    # Derived sizes -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per token: Tp * Hp * Wp * 3."""
        tp, hp, wp = self.patch_size
        return tp * hp * wp * 3

    @property
    def latent_dim(self) -> int:
        """Width of one token's code: len(fsq_levels) for FSQ, vae_latent_dim for the VAE."""
        return len(self.fsq_levels) if self.bottleneck == "fsq" else self.vae_latent_dim

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels) if self.bottleneck == "fsq" else 0

    def grid(self, frame_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """Token grid of one block, (time slices, rows, cols), at ``frame_size`` (default: the trained size)."""
        h, w = frame_size or self.frame_size
        tp, hp, wp = self.patch_size
        return self.frames_per_block // tp, h // hp, w // wp

    def tokens_per_block(self, frame_size: tuple[int, int] | None = None) -> int:
        return math.prod(self.grid(frame_size))

    @property
    def default_context_blocks(self) -> int:
        """Earlier blocks each block attends to by default: as many as in training."""
        return max(1, self.max_context_blocks - 1)

    def context_window(self, context_blocks: int | None) -> int:
        """``context_blocks`` checked, or the trained window where it is None."""
        if context_blocks is None:
            return self.default_context_blocks
        if not is_context_window(context_blocks):
            raise ValueError(
                f"expected context_blocks to be an int >= 1 (earlier blocks in context), got {context_blocks!r}"
            )
        return context_blocks

    def min_tokens(self, frame_size: tuple[int, int] | None = None) -> int:
        return max(1, math.ceil(self.min_token_fraction * self.tokens_per_block(frame_size) - 1e-9))

    def token_bounds(
        self, frame_size: tuple[int, int] | None = None, min_tokens: int | None = None, max_tokens: int | None = None
    ) -> tuple[int, int, int]:
        """(lo, hi, T): the counts a block may keep under optional caps (default: the model's minimum
        and every token), checked to satisfy 1 <= lo <= hi <= T."""
        T = self.tokens_per_block(frame_size)
        lo = self.min_tokens(frame_size) if min_tokens is None else min_tokens
        hi = T if max_tokens is None else max_tokens
        if not 1 <= lo <= hi <= T:
            raise ValueError(f"expected 1 <= min tokens ({lo}) <= max tokens ({hi}) <= {T} tokens per block")
        return lo, hi, T

    # Serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ElasticTokConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ElasticTokConfig fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ElasticTokConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ElasticTokConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, ElasticTokConfig] = {
    # The released ElasticTok-FSQ checkpoint.
    "fsq-200m": ElasticTokConfig(),
    # The released ElasticTok-VAE checkpoint.
    "vae-200m": ElasticTokConfig(patch_size=(2, 8, 8), bottleneck="vae", vae_latent_dim=8, rope_theta=5e6),
    # Tiny models for tests: the shape of the parity fixtures, milliseconds on a CPU.
    "tiny-fsq": ElasticTokConfig(
        hidden_size=64, intermediate_size=128, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
        frame_size=(32, 32),
    ),
    "tiny-vae": ElasticTokConfig(
        hidden_size=64, intermediate_size=128, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
        patch_size=(2, 8, 8), frame_size=(32, 32), bottleneck="vae", rope_theta=5e6, min_token_fraction=0.125,
    ),
    # Any frame size (axial RoPE), for tests and small experiments.
    "tiny-axial": ElasticTokConfig(
        hidden_size=64, intermediate_size=128, num_encoder_layers=2, num_decoder_layers=2, num_heads=2,
        frame_size=(32, 32), rope="axial", rope_theta=1e4,
    ),
    # The size of the embedded default model: small enough to train and run on a CPU.
    "small": ElasticTokConfig(
        hidden_size=256, intermediate_size=768, num_encoder_layers=4, num_decoder_layers=4, num_heads=4,
        patch_size=(1, 8, 8), frame_size=(64, 64), rope="axial", rope_theta=1e4,
    ),
}
