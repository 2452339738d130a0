"""Reading state-dict files and loading them strictly, with errors a user can act on."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from eaq.errors import EaqError

_SHOW = 5  # keys shown per list in a mismatch message
_PROBE_TIMEOUT_S = 3.0


def _strip_prefix(state: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Read a state dict from ``.th``/``.pt``/``.pth`` (torch) or ``.safetensors``.

    Torch files are read with ``weights_only=True``; a ``{'state_dict': ...}`` or
    ``{'model': ...}`` wrapper is unwrapped, and a DataParallel ``module.`` prefix is stripped.

    Args:
        path: the file.

    Returns:
        Parameter and buffer names -> tensors, on the CPU.

    Raises:
        EaqError: the file is missing or cannot be read as a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise EaqError(
            f"weights file not found: {path}; pass --weights PATH to an existing .th/.pt/.pth/"
            ".safetensors file, --weights default or --weights random"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse is the file's fault
        raise EaqError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise EaqError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return _strip_prefix(dict(obj))


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else f" ({len(keys)})"
    return shown + more


def load_weights_(model: nn.Module, path: Path, *, model_name: str) -> None:
    """Load a state-dict file into ``model`` strictly, in place.

    Floating-point tensors (e.g. fp16 files) are cast to the dtype of the model's tensor.

    Args:
        model: the freshly built model.
        path: the weights file (see :func:`load_state_dict_file`).
        model_name: the registry name, for messages.

    Raises:
        EaqError: the file is missing or unreadable, or its keys or shapes do not match the
            model (naming the missing and unexpected keys and the shape mismatches).
    """
    state = load_state_dict_file(path)
    own = model.state_dict()
    # BatchNorm fills in a missing ``num_batches_tracked`` itself (older checkpoints lack it).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"weights file {path} does not match model {model_name}"]
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes)}")
        parts.append(
            "the file probably belongs to another model (or another --num-classes); "
            "pick the matching --model or --weights"
        )
        raise EaqError("; ".join(parts))
    cast = {
        k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v
        for k, v in state.items()
    }
    model.load_state_dict(cast, strict=True)


def host_reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(model_name: str, source: str, exc: BaseException | None = None) -> EaqError:
    """The :class:`EaqError` for pretrained weights that could not be downloaded."""
    if exc is None:
        why = " (no network)"
    else:
        text = " ".join(str(exc).split())  # one line for the CLI
        why = f" ({type(exc).__name__}: {text[:200]})"
    return EaqError(
        f"could not download pretrained weights for {model_name} from {source}{why}; "
        "pass --weights PATH to a local state-dict file instead"
    )


@contextmanager
def hf_hub_offline_unless(reachable: bool):
    """Put huggingface_hub in offline mode (cache only) while the Hub is unreachable.

    Without this, an offline Hub download retries for about a minute before failing.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm falls back to plain URLs
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = old or not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def state_dict_from_url(
    url: str, *, model_name: str, check_hash: bool = False
) -> dict[str, Tensor]:
    """Download (or read from torch hub's cache) a state dict; fail fast when offline.

    Args:
        url: where the file lives; it is cached under ``torch.hub.get_dir()/checkpoints``.
        model_name: the registry name, for messages.
        check_hash: check the sha256 prefix in the file name (torch hub's convention).

    Raises:
        EaqError: the file is not cached and cannot be downloaded.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file() and not host_reachable(url):
        raise offline_error(model_name, url)
    try:
        torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=check_hash
        )
    except Exception as exc:  # network and hash failures alike
        raise offline_error(model_name, url, exc) from exc
    return load_state_dict_file(cached)
