"""The lean Llama-family CPU forward; it lives in :mod:`rlhfkit.backends.cpu.lean_decode`."""

from __future__ import annotations

from ..backends.cpu.lean_decode import SUPPORTED, LeanDecoder, lean_decoder_issue  # noqa: F401

__all__ = ["SUPPORTED", "LeanDecoder", "lean_decoder_issue"]
