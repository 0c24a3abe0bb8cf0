"""Pretrained directories (``config.json`` + ``model.safetensors``) for any module built from one config.

A mixin in the manner of huggingface_hub's ``PyTorchModelHubMixin``, but strict: the weights must
match the checksum recorded beside them, every tensor must match the config by name and shape,
nothing is ever unpickled, and the model comes back in eval mode.
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


def verify_checksum(path: str | Path, name: str) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded beside it (none recorded: nothing to check)."""
    expected = read_checksums(path).get(name)
    if expected is not None and sha256(Path(path) / name) != expected:
        raise ValueError(f"{Path(path) / name} does not match the checksum recorded in {CHECKSUMS_NAME}: "
                         "the file is damaged or was changed; restore it or save the model again")


def load_config(config_class: Any, path: str | Path) -> Any:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: expected a pretrained directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return config_class.from_json(file.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{file}: not a valid elastictok config ({err})") from None


def load_weights(path: str | Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: missing {WEIGHTS_NAME}")
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
    :meth:`init_nonpersistent` to rebuild buffers that are not saved (they start on the meta device).
    """

    config_class: ClassVar[type]

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as temp:
            save_file(state, str(temp), metadata={"format": "pt"})
        record_checksums(path, [WEIGHTS_NAME])
        write_text(path / CONFIG_NAME, self.config.to_json() + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu"):
        config = load_config(cls.config_class, path)
        state = load_weights(path, device)
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            model = cls(config)
        check_state(state, model.state_dict(), Path(path) / WEIGHTS_NAME)
        verify_checksum(path, WEIGHTS_NAME)  # after the structure: its errors say more about a wrong file
        model.load_state_dict(state, strict=True, assign=True)
        model.init_nonpersistent(device)
        return model.eval()

    def init_nonpersistent(self, device: str | torch.device) -> None:
        """Rebuild buffers that are not in the state dict on ``device`` (none by default)."""
