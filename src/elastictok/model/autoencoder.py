"""The ElasticTok autoencoder (pure: no I/O, no logging).

Pixel layout everywhere: videos are float tensors (B, 3, T, H, W) with values in [-1, 1].
Tokens are laid out time-major, then raster (row, column); each token holds its Tp x Hp x Wp x 3
pixels in (t, h, w, c) order, exactly as the official code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from elastictok.model.bottleneck import FSQ, GaussianBottleneck
from elastictok.model.checks import check_counts, check_video
from elastictok.model.config import ElasticTokConfig
from elastictok.model.layers import KV, TransformerStack, block_causal_mask, rope_angles
from elastictok.model.predictor import CountPredictor
from elastictok.model.tokens import Tokens
from elastictok.utils.pretrained import PretrainedMixin


@dataclass
class KVCache:
    """Keys/values of committed blocks, one (k, v) per layer, each (B, nh, n_blocks * T, hd)."""

    layers: list[KV] | None = None
    num_blocks: int = 0

    def append(self, kv: list[KV]) -> None:
        if self.layers is None:
            self.layers = [(k, v) for k, v in kv]
        else:
            self.layers = [(torch.cat((pk, k), 2), torch.cat((pv, v), 2)) for (pk, pv), (k, v) in zip(self.layers, kv)]
        self.num_blocks += 1

    def keep_last(self, num_blocks: int) -> None:
        """Drop all but the last ``num_blocks`` blocks (a sliding context window)."""
        if self.layers is None or self.num_blocks <= num_blocks:
            return
        if num_blocks <= 0:
            self.layers, self.num_blocks = None, 0
            return
        length = self.layers[0][0].shape[2] // self.num_blocks * num_blocks
        self.layers = [(k[:, :, -length:], v[:, :, -length:]) for k, v in self.layers]
        self.num_blocks = num_blocks


@dataclass
class StreamState:
    """Context for block-by-block coding: encoder and decoder caches and the next block's index."""

    frame_size: tuple[int, int]
    enc: KVCache = field(default_factory=KVCache)
    dec: KVCache = field(default_factory=KVCache)
    next_block: int = 0


@dataclass
class BlockStep:
    """One block coded against a :class:`StreamState`, not yet committed to it."""

    counts: torch.Tensor  # (B,)
    z_pre: torch.Tensor  # (B, T, Dz)
    codes: torch.Tensor  # (B, T, D), zero past the count
    recon: torch.Tensor  # (B, T, P) in [-1, 1]
    enc_kv: list[KV]
    dec_kv: list[KV]


@dataclass
class ForwardOutput:
    recon: torch.Tensor  # (B, 3, T, H, W) in [-1, 1]
    codes: torch.Tensor  # (B, L, D), zero at dropped tokens
    z_pre: torch.Tensor  # (B, L, Dz)
    keep: torch.Tensor  # (B, L) boolean
    kl: torch.Tensor | None  # VAE only


def patchify(video: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, P) in the official token order: time-major, then raster."""
    tp, hp, wp = patch_size
    B, C, T, H, W = video.shape
    x = video.reshape(B, C, T // tp, tp, H // hp, hp, W // wp, wp)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, S, gh, gw, tp, hp, wp, C)
    return x.reshape(B, (T // tp) * (H // hp) * (W // wp), tp * hp * wp * C)


def pad_to_blocks(video: torch.Tensor, frames_per_block: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T', H, W) with T' a multiple of frames_per_block, repeating the last frame."""
    missing = -video.shape[2] % frames_per_block
    if missing:
        video = torch.cat((video, video[:, :, -1:].expand(-1, -1, missing, -1, -1)), dim=2)
    return video


def _init_linear(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)


class Encoder(TransformerStack):
    def __init__(self, c: ElasticTokConfig) -> None:
        super().__init__(c.num_encoder_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.rms_norm_eps)
        self.conditioned = c.encoder_conditioning == "mask"
        self.in_proj = nn.Linear(c.patch_dim, c.hidden_size, bias=False)
        if self.conditioned:
            self.kept_embed = nn.Parameter(torch.randn(c.hidden_size) / math.sqrt(c.hidden_size))
            self.masked_embed = nn.Parameter(torch.randn(c.hidden_size) / math.sqrt(c.hidden_size))
        out = len(c.fsq_levels) if c.bottleneck == "fsq" else 2 * c.vae_latent_dim
        self.pre_quant = nn.Linear(c.hidden_size, out, bias=False)

    def forward(self, patches, keep, cos, sin, mask, past=None) -> tuple[torch.Tensor, list[KV]]:
        """patches (B, L, P), keep (B, L) bool -> z_pre (B, L, Dz)."""
        x = self.in_proj(patches)
        if self.conditioned:
            x = x + torch.where(keep[..., None], self.kept_embed, self.masked_embed)
        x, kv = self.run_layers(x, cos, sin, mask, past)
        return self.pre_quant(x), kv


class Decoder(TransformerStack):
    def __init__(self, c: ElasticTokConfig) -> None:
        super().__init__(c.num_decoder_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.rms_norm_eps)
        # No bias: dropped tokens (zero codes) enter the trunk as exact zero vectors.
        self.post_quant = nn.Linear(c.latent_dim, c.hidden_size, bias=False)
        self.out_proj = nn.Linear(c.hidden_size, c.patch_dim, bias=False)

    def forward(self, codes, cos, sin, mask, past=None) -> tuple[torch.Tensor, list[KV]]:
        """codes (B, L, D) -> reconstructed patches (B, L, P) in [-1, 1]."""
        x, kv = self.run_layers(self.post_quant(codes), cos, sin, mask, past)
        return torch.tanh(self.out_proj(x)), kv


class ElasticTok(PretrainedMixin, nn.Module):
    """Block-causal transformer autoencoder that spends a variable number of tokens per block.

    ``ElasticTok.from_pretrained(dir)`` / ``model.save_pretrained(dir)`` read and write a pretrained
    directory (``config.json`` + ``model.safetensors``, and ``predictor.json`` + ``predictor.safetensors``
    when the model has a token-count predictor, ``model.predictor``; None without one).
    """

    config_class = ElasticTokConfig
    companions = {"predictor": CountPredictor}

    def __init__(self, config: ElasticTokConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = self._make_quantizer()
        self.predictor: CountPredictor | None = None
        _init_linear(self, config.initializer_range)

    def _make_quantizer(self) -> nn.Module:
        c = self.config
        return FSQ(c.fsq_levels) if c.bottleneck == "fsq" else GaussianBottleneck(c.vae_latent_dim)

    def init_nonpersistent(self, device: str | torch.device) -> None:
        # The FSQ constants are non-persistent buffers: after a load onto meta, build them for real.
        self.quantizer = self._make_quantizer().to(device)

    @property
    def device(self) -> torch.device:
        return self.encoder.in_proj.weight.device

    # Geometry ------------------------------------------------------------------------------------
    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, L, P), tokens time-major then raster; T a multiple of Tp."""
        return patchify(video, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor, num_frames: int, frame_size: tuple[int, int]) -> torch.Tensor:
        """(B, L, P) -> (B, 3, T, H, W); the inverse of :meth:`patchify`."""
        tp, hp, wp = self.config.patch_size
        H, W = frame_size
        B = patches.shape[0]
        x = patches.reshape(B, num_frames // tp, H // hp, W // wp, tp, hp, wp, 3)  # (B, S, gh, gw, tp, hp, wp, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, S, tp, gh, hp, gw, wp)
        return x.reshape(B, 3, num_frames, H, W)

    def positions(self, frame_size: tuple[int, int], num_blocks: int, start_block: int = 0) -> torch.Tensor:
        """Token positions for RoPE: (L,) flat indices (official) or (L, 3) (time slice, row, col)."""
        s, gh, gw = self.config.grid(frame_size)
        per_block = s * gh * gw
        device = self.device
        if self.config.rope == "1d":
            return torch.arange(start_block * per_block, (start_block + num_blocks) * per_block, device=device)
        t = torch.arange(start_block * s, (start_block + num_blocks) * s, device=device)
        grid = torch.meshgrid(t, torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        return torch.stack(grid, dim=-1).reshape(-1, 3)  # (L, 3), time-major then raster

    def _rope(self, frame_size, num_blocks, start_block) -> tuple[torch.Tensor, torch.Tensor]:
        pos = self.positions(frame_size, num_blocks, start_block)
        angles = rope_angles(pos, self.config.head_dim, self.config.rope_theta)
        return angles.cos(), angles.sin()

    def _mask(self, num_tokens: int, tokens_per_block: int, past_len: int, device, window=None, keyframes=None):
        """The attention mask, or None where every key may be attended to.

        ``keyframes`` (B, n_blocks) bool, for a whole sequence without a cached past: True where a
        block starts afresh, attending to no block before it."""
        past_blocks = past_len // tokens_per_block
        if keyframes is not None and not keyframes[:, 1:].any():
            keyframes = None  # block 0 always starts afresh
        if keyframes is not None:
            if past_len:
                raise ValueError("keyframes apply to a whole sequence; a cached past is reset at a keyframe instead")
            segments = keyframes.long().cumsum(1)  # (B, n_blocks): a new segment at every keyframe
            return block_causal_mask(num_tokens, tokens_per_block, device, window, 0, segments)
        if num_tokens <= tokens_per_block and (window is None or past_blocks <= window):
            return None  # one block sees itself and all of its past
        if window is not None and past_blocks + num_tokens // tokens_per_block <= window + 1:
            window = None  # no block is further back than the window: plain block-causal
        return block_causal_mask(num_tokens, tokens_per_block, device, window, past_blocks)

    def keep_mask(self, counts: torch.Tensor, tokens_per_block: int) -> torch.Tensor:
        """(B, n_blocks) kept counts -> (B, L) boolean prefix mask per block."""
        pos = torch.arange(tokens_per_block, device=counts.device)
        return (pos < counts[..., None]).flatten(1)  # (B, n_blocks * T)

    # Core passes over patch sequences (whole sequence, or blocks after a cached past) ------------
    def encode_patches(
        self, patches, keep, frame_size, start_block=0, past: list[KV] | None = None, context_blocks=None
    ):
        """patches (B, L, P) and keep (B, L) -> (z_pre (B, L, Dz), new per-layer (k, v)).

        ``context_blocks``: earlier blocks (cached or in ``patches``) each block attends to; None: all."""
        T = self.config.tokens_per_block(frame_size)
        n_blocks = patches.shape[1] // T
        cos, sin = self._rope(frame_size, n_blocks, start_block)
        past_len = past[0][0].shape[2] if past else 0
        mask = self._mask(patches.shape[1], T, past_len, patches.device, context_blocks)
        return self.encoder(patches.to(self.encoder.in_proj.weight.dtype), keep, cos, sin, mask, past)

    def quantize(self, z_pre, keep, sample: bool = False, generator=None):
        """z_pre (B, L, Dz) -> (codes (B, L, D) zero at dropped tokens, VAE mean, VAE logvar)."""
        if isinstance(self.quantizer, FSQ):
            codes, mean, logvar = self.quantizer(z_pre), None, None
        else:
            codes, mean, logvar = self.quantizer(z_pre, sample=sample, generator=generator)
        return codes * keep[..., None], mean, logvar

    def decode_patches(
        self, codes, frame_size, start_block=0, past: list[KV] | None = None, context_blocks=None, keyframes=None
    ):
        """codes (B, L, D) -> (recon patches (B, L, P) in [-1, 1], new per-layer (k, v))."""
        T = self.config.tokens_per_block(frame_size)
        cos, sin = self._rope(frame_size, codes.shape[1] // T, start_block)
        past_len = past[0][0].shape[2] if past else 0
        mask = self._mask(codes.shape[1], T, past_len, codes.device, context_blocks, keyframes)
        return self.decoder(codes.to(self.decoder.post_quant.weight.dtype), cos, sin, mask, past)

    def forward(self, video: torch.Tensor, counts: torch.Tensor, sample: bool | None = None, generator=None):
        """Training pass: video (B, 3, T, H, W) in [-1, 1] with T a multiple of frames_per_block,
        counts (B, n_blocks) tokens kept per block. Returns a :class:`ForwardOutput`."""
        frame_size = tuple(video.shape[-2:])
        T = self.config.tokens_per_block(frame_size)
        keep = self.keep_mask(counts, T)
        z_pre, _ = self.encode_patches(self.patchify(video), keep, frame_size)
        sample = self.training if sample is None else sample
        codes, mean, logvar = self.quantize(z_pre, keep, sample=sample, generator=generator)
        recon, _ = self.decode_patches(codes, frame_size)
        kl = None if mean is None else GaussianBottleneck.kl(mean, logvar, keep, T)
        return ForwardOutput(self.unpatchify(recon, video.shape[2], frame_size), codes, z_pre, keep, kl)

    # Public inference API --------------------------------------------------------------------------
    def pad_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame to fill the last block (an image becomes a static block, as officially)."""
        return pad_to_blocks(video, self.config.frames_per_block)

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes_to_indices(codes) if isinstance(self.quantizer, FSQ) else codes

    def values_to_codes(self, values: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(values) if isinstance(self.quantizer, FSQ) else values.float()

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, num_tokens: int | torch.Tensor | None = None, context_blocks: int | None = None
    ) -> Tokens:
        """Encode a video (B, 3, T, H, W) in [-1, 1] at ``num_tokens`` kept tokens per block.

        ``num_tokens``: None (every token), an int for every block, or a (B, n_blocks) tensor. A video
        whose length is not a multiple of ``frames_per_block`` is padded by repeating its last frame.
        ``context_blocks``: earlier blocks each block attends to; None: as many as the model saw in
        training (``config.default_context_blocks``); pass the video's block count for all of them.
        """
        check_video(video, self.config)
        window = self.config.context_window(context_blocks)
        num_frames, frame_size = video.shape[2], tuple(video.shape[-2:])
        video = self.pad_frames(video)
        T = self.config.tokens_per_block(frame_size)
        n_blocks = video.shape[2] // self.config.frames_per_block
        counts = check_counts(num_tokens, video.shape[0], n_blocks, T, video.device)
        keep = self.keep_mask(counts, T)
        z_pre, _ = self.encode_patches(self.patchify(video), keep, frame_size, context_blocks=window)
        codes, _, _ = self.quantize(z_pre, keep)
        values = self.codes_to_values(codes).unflatten(1, (n_blocks, T))  # (B, n_blocks, T[, D])
        return Tokens(counts, values, self.config.bottleneck, num_frames, frame_size, window)

    def tokens_to_codes(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> masked codes (B, L, D) for the decoder."""
        if tokens.kind != self.config.bottleneck:
            raise ValueError(f"these are {tokens.kind} tokens but the model has a {self.config.bottleneck} bottleneck")
        T = self.config.tokens_per_block(tokens.frame_size)
        if tokens.tokens_per_block != T:
            raise ValueError(
                f"expected {T} token slots per block for frames {tokens.frame_size}, got {tokens.tokens_per_block}"
            )
        check_counts(tokens.counts, tokens.batch_size, tokens.num_blocks, T, tokens.counts.device)
        tokens.check_values(self.config.codebook_size if self.config.bottleneck == "fsq" else None)
        codes = self.values_to_codes(tokens.values.to(self.device)).flatten(1, 2)
        return codes * self.keep_mask(tokens.counts.to(codes.device), T)[..., None]

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        """Tokens -> video (B, 3, num_frames, H, W) in [-1, 1], with the context (window, keyframes)
        they were encoded with."""
        codes = self.tokens_to_codes(tokens)
        recon, _ = self.decode_patches(
            codes, tokens.frame_size, tokens.start_block, context_blocks=tokens.context_blocks,
            keyframes=tokens.keyframes,
        )
        frames = tokens.num_blocks * self.config.frames_per_block
        return self.unpatchify(recon.float(), frames, tokens.frame_size)[:, :, : tokens.num_frames]

    # Block-by-block coding with a KV cache -------------------------------------------------------
    def new_state(self, frame_size: tuple[int, int] | None = None) -> StreamState:
        return StreamState(frame_size=tuple(frame_size or self.config.frame_size))

    def encode_block(self, patches: torch.Tensor, counts: torch.Tensor, state: StreamState):
        """One block's patches (B, T, P) with counts (B,) -> (z_pre, keep (B, T), enc (k, v)), not committed."""
        T = patches.shape[1]
        keep = torch.arange(T, device=patches.device) < counts[:, None]
        z_pre, kv = self.encode_patches(patches, keep, state.frame_size, state.next_block, state.enc.layers)
        return z_pre, keep, kv

    def decode_block(self, codes: torch.Tensor, state: StreamState):
        """One block's masked codes (B, T, D) -> (recon patches (B, T, P), dec (k, v)), not committed."""
        return self.decode_patches(codes, state.frame_size, state.next_block, state.dec.layers)

    def code_block(self, patches: torch.Tensor, counts: torch.Tensor, state: StreamState) -> BlockStep:
        """Encode, quantise and decode one block against the cached past, without committing it."""
        z_pre, keep, enc_kv = self.encode_block(patches, counts, state)
        codes, _, _ = self.quantize(z_pre, keep)
        recon, dec_kv = self.decode_block(codes, state)
        return BlockStep(counts, z_pre, codes, recon, enc_kv, dec_kv)

    @staticmethod
    def commit(state: StreamState, step: BlockStep, context_blocks: int | None = None) -> None:
        """Append a coded block to the context; keep at most ``context_blocks`` blocks if given."""
        state.enc.append(step.enc_kv)
        state.dec.append(step.dec_kv)
        state.next_block += 1
        if context_blocks is not None:
            state.enc.keep_last(context_blocks)
            state.dec.keep_last(context_blocks)
