"""The malloc arena cap the echoseen command sets at startup."""

from __future__ import annotations

import ctypes.util

import pytest

from echoseen import malloc


def test_operator_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")

    assert malloc.limit_arenas() is False


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library found by name")
def test_cap_set_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)

    assert malloc.limit_arenas() is True
