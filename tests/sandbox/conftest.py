"""Fixtures of the sandbox tests: one warm in-process Sandbox per test module."""

import pytest_asyncio

from tirl.sandbox.pool import Sandbox


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    async with Sandbox(slots=4, timeout_s=10.0, preload=["math", "fractions", "numpy", "sympy"]) as s:
        yield s
