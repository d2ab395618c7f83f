"""Where a model or tokenizer comes from: a local directory, or a Hugging Face hub id (the cache, or the hub when it
can be reached). Checked before anything heavy is imported or loaded, so that a mistyped path fails at once instead
of after a minute of retries against a hub this offline-by-default toolkit may not reach."""

from __future__ import annotations

import os

__all__ = ["ModelLoadError", "locate"]


class ModelLoadError(ValueError):
    """A model or tokenizer argument could not be turned into a usable object."""


def locate(source: str | os.PathLike, what: str = "model") -> str:
    """``source`` as ``from_pretrained`` should get it: an existing local directory as an absolute path; a hub id as
    it is, when it is in the Hugging Face cache or the hub can be reached. Anything else raises ``ModelLoadError`` at
    once, instead of after a minute of retries against an unreachable hub: a path that does not exist (it names a
    folder, or has more than one ``/``, or a parent that exists), or a hub id while offline (``HF_HUB_OFFLINE=1``, or
    no connection to the hub)."""
    name = os.path.expanduser(os.fspath(source))
    if os.path.isdir(name):
        return os.path.abspath(name)
    parts = name.replace(os.sep, "/").split("/")
    looks_local = (name.startswith((".", "/", "~")) or len(parts) > 2 or os.path.exists(name)
                   or (len(parts) == 2 and os.path.isdir(parts[0])))
    if looks_local:
        raise ModelLoadError(f"{what} {os.fspath(source)!r}: no such directory here; give a directory in Hugging Face "
                             "format (config.json, weights, tokenizer files) or a hub id")
    if _in_hub_cache(name) or _hub_reachable():
        return name
    raise ModelLoadError(f"{what} {name!r} is not a local directory, not in the Hugging Face cache, and the hub "
                         "cannot be reached from here (offline); give a local directory in Hugging Face format")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or isinstance(
            try_to_load_from_cache(repo_id, "tokenizer_config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` seconds (never, with ``HF_HUB_OFFLINE``)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
