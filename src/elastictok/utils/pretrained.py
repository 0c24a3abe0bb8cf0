"""Pretrained directories (``config.json`` + ``model.safetensors``) for any module built from one config.

A mixin in the manner of huggingface_hub's ``PyTorchModelHubMixin``, but strict: the weights must
match the checksum recorded beside them, every tensor must match the config by name and shape,
nothing is ever unpickled, and the model comes back in eval mode. A module may own *companions*:
smaller modules saved beside it under their own file names (such as a token-count predictor), each
recording the SHA-256 of the weights it was made for, loaded when present and refused when they were
made for other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from elastictok.utils.files import atomic_path, sha256, write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# SHA-256 of each weights file in the directory; a damaged or edited file is refused on load.
CHECKSUMS_NAME = "checksums.json"


def record_checksums(path: str | Path, names: list[str]) -> None:
    """Add the SHA-256 of ``names`` (files in the directory ``path``) to its checksums file."""
    path = Path(path)
    sums = read_checksums(path)
    sums.update({name: sha256(path / name) for name in names})
    write_text(path / CHECKSUMS_NAME, json.dumps(dict(sorted(sums.items())), indent=2) + "\n")


def read_checksums(path: str | Path) -> dict[str, str]:
    file = Path(path) / CHECKSUMS_NAME
    if not file.is_file():
        return {}
    try:
        sums = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not a valid checksums file ({err})") from None
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        raise ValueError(f"{file}: expected a JSON object of file name -> SHA-256")
    return sums


def weights_digest(path: str | Path, name: str = WEIGHTS_NAME) -> str:
    """SHA-256 of a weights file in the directory ``path``: the one recorded beside it, else computed."""
    return read_checksums(path).get(name) or sha256(Path(path) / name)


def verify_checksum(path: str | Path, name: str) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded beside it (none recorded: nothing to check)."""
    expected = read_checksums(path).get(name)
    if expected is not None and sha256(Path(path) / name) != expected:
        raise ValueError(f"{Path(path) / name} does not match the checksum recorded in {CHECKSUMS_NAME}: "
                         "the file is damaged or was changed; restore it or save the model again")


def load_config(config_class: Any, path: str | Path, name: str = CONFIG_NAME, weights: str = WEIGHTS_NAME) -> Any:
    file = Path(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"{path}: expected a pretrained directory with {name} and {weights}")
    try:
        return config_class.from_json(file.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{file}: not a valid elastictok config ({err})") from None


def load_weights(path: str | Path, device: str | torch.device, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    weights = Path(path) / name
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: missing {name}")
    try:
        return load_file(weights, device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights}: not a readable safetensors file ({err})") from None


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse a state dict whose names or shapes differ from the model's, saying which."""
    want = {k: tuple(v.shape) for k, v in expected.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match its config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{k} {got[k]} (expected {want[k]})" for k in want if got[k] != want[k]]
    if wrong:
        raise ValueError(f"{where} does not match its config: {'; '.join(wrong[:3])}")


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` whose ``__init__`` takes one config.

    The class sets ``config_class`` (with ``to_json`` / ``from_json``) and may override
    :meth:`init_nonpersistent` to rebuild buffers that are not saved (they start on the meta device),
    ``config_name`` / ``weights_name`` (the file names) and ``companions`` (attribute name -> class of
    an optional companion module; its config has a ``for_weights`` field, the SHA-256 of the weights
    it was made for).
    """

    config_class: ClassVar[type]
    config_name: ClassVar[str] = CONFIG_NAME
    weights_name: ClassVar[str] = WEIGHTS_NAME
    companions: ClassVar[dict[str, type]] = {}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the directory. A companion made for other weights than the ones written (after
        fine-tuning, say) is left out: it would be refused on load."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                 if k.split(".", 1)[0] not in self.companions}
        with atomic_path(path / self.weights_name) as temp:
            save_file(state, str(temp), metadata={"format": "pt"})
        record_checksums(path, [self.weights_name])
        write_text(path / self.config_name, self.config.to_json() + "\n")
        digest = read_checksums(path)[self.weights_name]
        for attr in self.companions:
            companion = getattr(self, attr, None)
            if companion is not None and companion.config.for_weights == digest:
                companion.save_pretrained(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", companions: bool = True):
        """The module saved in ``path``, with its companions unless ``companions`` is False (a verb that
        replaces them need not read, nor be refused by, the ones there)."""
        config = load_config(cls.config_class, path, cls.config_name, cls.weights_name)
        state = load_weights(path, device, cls.weights_name)
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            model = cls(config)
        check_state(state, model.state_dict(), Path(path) / cls.weights_name)
        verify_checksum(path, cls.weights_name)  # after the structure: its errors say more about a wrong file
        model.load_state_dict(state, strict=True, assign=True)
        model.init_nonpersistent(device)
        for attr, companion_class in cls.companions.items():
            if companions and (Path(path) / companion_class.config_name).is_file():
                setattr(model, attr, load_companion(companion_class, path, cls.weights_name, device))
        return model.eval()

    def init_nonpersistent(self, device: str | torch.device) -> None:
        """Rebuild buffers that are not in the state dict on ``device`` (none by default)."""


def load_companion(companion_class: Any, path: str | Path, owner_weights: str, device: str | torch.device) -> Any:
    """A companion module from ``path``, refused unless it was made for the owner's weights there."""
    try:
        companion = companion_class.from_pretrained(path, device)
    except ValueError as err:  # damaged, or of a shape another version made: either way it must be remade
        raise ValueError(f"{err}; make it again or remove it") from None
    digest = weights_digest(path, owner_weights)
    if companion.config.for_weights != digest:
        raise ValueError(f"{Path(path) / companion_class.config_name} was made for other weights than "
                         f"{owner_weights} (SHA-256 {companion.config.for_weights[:12]}..., not {digest[:12]}...); "
                         "make it again for these weights or remove it")
    return companion
