"""Running one cell of user code with notebook semantics, inside an already-isolated child.

What it does: parses the cell, runs it in the given globals, prints the value of a trailing
expression (like a notebook), and turns an exception into a short traceback that shows only
the user's own frames (``File "<cell>", line N``) and the final ``Type: message`` line. The
outcome (ok / error / memory / exit code) is returned, never raised.

What it does not: no isolation (the zygote sets that up before calling here), no output
capture (stdout/stderr are the call's pipes).
"""

from __future__ import annotations

import ast
import linecache
import sys
import traceback
from dataclasses import dataclass

CELL_FILENAME = "<cell>"
MEMORY_EXIT = 201  # exit code of a one-shot child whose code ran out of memory
SETUP_FAILED_EXIT = 70  # exit code of a child that could not isolate itself
RESERVED_EXITS = (MEMORY_EXIT, SETUP_FAILED_EXIT)


@dataclass
class CellOutcome:
    kind: str  # "ok" | "error" | "memory"
    exit_code: int


def _register_source(code: str) -> None:
    lines = code.splitlines(keepends=True)
    linecache.cache[CELL_FILENAME] = (len(code), None, lines, CELL_FILENAME)


def format_user_error(exc: BaseException) -> str:
    """A traceback with only ``<cell>`` frames, then ``Type: message``."""
    frames = [fs for fs in traceback.extract_tb(exc.__traceback__) if fs.filename == CELL_FILENAME]
    parts: list[str] = []
    if frames:
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(frames))
    parts.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(parts)


def _split_last_expression(tree: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
        return tree, ast.Expression(body=last.value)  # type: ignore[attr-defined]
    return tree, None


def run_cell(code: str, glb: dict) -> CellOutcome:
    """Execute ``code`` in ``glb``; print a trailing expression's repr; report the outcome."""
    _register_source(code)
    try:
        tree = ast.parse(code, CELL_FILENAME, "exec")
        body, last = _split_last_expression(tree)
        exec(compile(body, CELL_FILENAME, "exec"), glb)
        if last is not None:
            value = eval(compile(last, CELL_FILENAME, "eval"), glb)
            if value is not None:
                print(repr(value))
        return CellOutcome("ok", 0)
    except SystemExit as exc:
        code_ = exc.code
        if code_ is None:
            return CellOutcome("ok", 0)
        if isinstance(code_, int):
            code_ &= 0xFF
            if code_ in RESERVED_EXITS:
                code_ = 1  # never mistaken for the sandbox's own signals
            return CellOutcome("ok" if code_ == 0 else "error", code_)
        print(code_, file=sys.stderr)
        return CellOutcome("error", 1)
    except MemoryError as exc:
        _write_error(exc)
        return CellOutcome("memory", MEMORY_EXIT)
    except BaseException as exc:  # the user's error, reported not raised
        _write_error(exc)
        return CellOutcome("error", 1)


def _write_error(exc: BaseException) -> None:
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        sys.stderr.write(format_user_error(exc))
        sys.stderr.flush()
    except Exception:
        pass
