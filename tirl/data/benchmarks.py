"""Benchmark problems: JSONL/Parquet files, named benchmarks, CHAMP, the Hugging Face Hub.

:func:`load_problems` returns a list of problem dicts ``{"id", "problem", "answer",
"source", ...}`` (extra fields of the file, such as MATH-500's ``subject`` and ``level``,
are kept). ``name_or_path`` is resolved in this order:

1. an existing ``.jsonl`` / ``.json`` / ``.parquet`` file;
2. a benchmark name (``aime24``, ``aime25``, ``math500``, ``hmmt_feb25``, ``amc23``,
   ``gsm8k``, or any ``<name>.jsonl`` / ``<name>.parquet``) in the data directory —
   ``[data] data_dir``, by default the files shipped with tirl in ``tirl/data/files/``
   (AIME 2024/2025, MATH-500, HMMT Feb 2025, AMC 2023, GSM8K test; provenance in its
   README.md); a relative data dir is looked up from the current directory, then from the
   repository root;
3. ``champ``: the 270 problems of CHAMP (Mao et al. 2024) shipped in the
   ``champ-dataset`` package (offline);
4. a known benchmark name on the Hugging Face Hub, only when the hub is reachable (not
   with ``HF_HUB_OFFLINE=1``); the download is cached by ``huggingface_hub``.

What it does not do: generate problems (``tirl.data.procedural``), or check answers. Hub
copies differ from the offline files in ids and sometimes in wording; the offline files
(provenance in the data dir's README.md) are what tirl's own numbers use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "files"

# names that differ from the file stem in the data dir
FILE_ALIASES = {"gsm8k": "gsm8k_test", "math-500": "math500", "hmmt": "hmmt_feb25",
                "hmmt25": "hmmt_feb25", "aime2024": "aime24", "aime2025": "aime25"}

# fallbacks tried when the configured field is absent (only for the default field names)
PROBLEM_FIELD_FALLBACKS = ("problem", "question", "Problem", "prompt")
ANSWER_FIELD_FALLBACKS = ("answer", "expected_answer", "Answer", "final_answer")
ID_FIELDS = ("id", "unique_id", "problem_idx", "ID", "idx")


@dataclass(frozen=True)
class HubSource:
    """Where a named benchmark lives on the Hugging Face Hub (a dataset repository)."""

    repo_id: str
    patterns: tuple[str, ...]  # files to fetch (glob patterns inside the repo)
    answer_from: Callable[[str], str] | None = None  # e.g. GSM8K's "... #### 42" -> "42"


def _gsm8k_answer(text: str) -> str:
    return text.split("####")[-1].strip().replace(",", "")


HUB_SOURCES: dict[str, HubSource] = {
    "aime24": HubSource("HuggingFaceH4/aime_2024", ("*.parquet", "*.jsonl")),
    "aime25": HubSource("MathArena/aime_2025", ("*.parquet",)),
    "math500": HubSource("HuggingFaceH4/MATH-500", ("test.jsonl",)),
    "hmmt_feb25": HubSource("MathArena/hmmt_feb_2025", ("*.parquet",)),
    "amc23": HubSource("math-ai/amc23", ("*.parquet", "*.jsonl")),
    "gsm8k": HubSource("openai/gsm8k", ("main/test-*.parquet",), _gsm8k_answer),
}

KNOWN_BENCHMARKS = ("aime24", "aime25", "math500", "hmmt_feb25", "amc23", "gsm8k", "champ")


class BenchmarkError(ValueError):
    """A benchmark that cannot be found or read; the message says what to do."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data dir as given if it exists; a relative one is also tried from the repo root."""
    d = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    if d.is_dir():
        return d
    if not d.is_absolute() and (repo_root() / d).is_dir():
        return repo_root() / d
    return None


def benchmark_name(name_or_path: str) -> str:
    """A short name for reports: the benchmark name, or a file's stem."""
    p = Path(name_or_path)
    if p.suffix in (".jsonl", ".json", ".parquet"):
        return p.stem
    return name_or_path


def load_problems(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    problem_field: str = "problem",
    answer_field: str = "answer",
    limit: int = 0,
    hub: bool | None = None,
) -> list[dict[str, Any]]:
    """Problems of a benchmark or file (see the module docstring for the resolution order).

    ``limit > 0`` keeps the first ``limit`` problems. ``hub=None`` tries the Hugging Face
    Hub only when it is not disabled by ``HF_HUB_OFFLINE``; ``False`` never tries it.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    looked: list[str] = []
    if path.suffix in (".jsonl", ".json", ".parquet") or path.is_file():
        if not path.is_file():
            raise BenchmarkError(f"benchmark file {text!r} does not exist; check the path")
        probs = read_problem_file(path, problem_field, answer_field, source=path.stem)
        return probs[:limit] if limit else probs

    name = text.lower()
    stem = FILE_ALIASES.get(name, name)
    ddir = resolve_data_dir(data_dir)
    if ddir is not None:
        cands = [ddir / f"{s}{ext}" for s in dict.fromkeys((stem, name)) for ext in (".jsonl", ".parquet")]
        for cand in cands:
            looked.append(str(cand))
            if cand.is_file():
                probs = read_problem_file(cand, problem_field, answer_field, source=name)
                return probs[:limit] if limit else probs
    else:
        looked.append(f"data dir {str(data_dir)!r} (not found)")

    if name == "champ":
        probs = load_champ()
        return probs[:limit] if limit else probs

    canonical = FILE_ALIASES.get(name, name)
    canonical = "gsm8k" if canonical == "gsm8k_test" else canonical
    if canonical in HUB_SOURCES and _hub_allowed(hub):
        try:
            probs = load_from_hub(canonical, problem_field, answer_field)
        except Exception as err:  # noqa: BLE001 — any network/format failure: say it, then fall through
            looked.append(f"Hugging Face Hub {HUB_SOURCES[canonical].repo_id} ({type(err).__name__}: {err})")
        else:
            return probs[:limit] if limit else probs
    elif canonical in HUB_SOURCES:
        looked.append("Hugging Face Hub (disabled: HF_HUB_OFFLINE or hub=False)")

    raise BenchmarkError(
        f"benchmark {text!r} not found. Looked at: {'; '.join(looked)}. "
        f"Give a .jsonl/.parquet path, or a name ({', '.join(KNOWN_BENCHMARKS)}) with "
        f"--data-dir / [data] data_dir pointing at a folder that holds <name>.jsonl."
    )


def _hub_allowed(hub: bool | None) -> bool:
    if hub is not None:
        return hub
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------
# files


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (a list, or {"data": [...]}) or Parquet file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is a dependency
            raise BenchmarkError(
                f"reading {path} needs pyarrow; install it with `pip install pyarrow`"
            ) from None
        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a JSON list of objects (or use JSONL)")
        return data
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise BenchmarkError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _pick_field(row: dict, wanted: str, fallbacks: tuple[str, ...], default: str) -> str | None:
    if wanted in row:
        return wanted
    if wanted == default:
        for f in fallbacks:
            if f in row:
                return f
    return None


def rows_to_problems(
    rows: list[dict[str, Any]], problem_field: str, answer_field: str, source: str, where: str,
    answer_from: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Normalise rows into problem dicts; errors name the row, the field and the flag to use."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        pf = _pick_field(row, problem_field, PROBLEM_FIELD_FALLBACKS, "problem")
        af = _pick_field(row, answer_field, ANSWER_FIELD_FALLBACKS, "answer")
        for want, got, flag in ((problem_field, pf, "--problem-field"), (answer_field, af, "--answer-field")):
            if got is None:
                raise BenchmarkError(
                    f"{where}: row {i + 1} has no field {want!r} (it has: {', '.join(sorted(row))}); "
                    f"name the right one with {flag} (or [data] {flag[2:].replace('-', '_')})"
                )
        problem, answer = row[pf], row[af]
        if problem is None or str(problem).strip() == "":
            raise BenchmarkError(f"{where}: row {i + 1} has an empty {pf!r}")
        if answer is None or str(answer).strip() == "":
            raise BenchmarkError(f"{where}: row {i + 1} has an empty {af!r}")
        answer = _answer_text(answer)
        if answer_from is not None:
            answer = answer_from(answer)
        pid = next((str(row[f]) for f in ID_FIELDS if row.get(f) not in (None, "")), None)
        if pid is None or pid in seen:
            pid = f"{source}-{i}" if pid is None else f"{pid}#{i}"
        seen.add(pid)
        extra = {k: v for k, v in row.items() if k not in (pf, af, "id") and _jsonable_scalar(v)}
        out.append({**extra, "id": pid, "problem": str(problem), "answer": answer,
                    "source": str(row.get("source") or source)})
    return out


def _answer_text(answer: Any) -> str:
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))  # 27.0 -> "27"
    return str(answer).strip()


def _jsonable_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def read_problem_file(
    path: Path, problem_field: str = "problem", answer_field: str = "answer", source: str | None = None
) -> list[dict[str, Any]]:
    rows = read_rows(path)
    if not rows:
        raise BenchmarkError(f"{path} holds no problems")
    return rows_to_problems(rows, problem_field, answer_field, source or path.stem, str(path))


# ---------------------------------------------------------------------------------------
# CHAMP (offline, from the champ-dataset package)


def load_champ() -> list[dict[str, Any]]:
    """The 270 CHAMP problems (id, problem, answer, category) from ``champ-dataset``."""
    try:
        import champ_dataset
    except ImportError:
        raise BenchmarkError(
            "benchmark 'champ' needs the champ-dataset package: pip install champ-dataset"
        ) from None
    ds = champ_dataset.load("v0")
    out = []
    for pid, p in ds.problems.items():
        out.append({"id": pid, "problem": p.text, "answer": str(p.answer).strip(),
                    "source": "champ", "category": p.category})
    return out


# ---------------------------------------------------------------------------------------
# Hugging Face Hub (only with a network)


def load_from_hub(name: str, problem_field: str = "problem", answer_field: str = "answer") -> list[dict[str, Any]]:
    """Download a known benchmark from the Hub (cached) and normalise it like a file."""
    from huggingface_hub import snapshot_download

    src = HUB_SOURCES[name]
    local = Path(snapshot_download(repo_id=src.repo_id, repo_type="dataset",
                                   allow_patterns=list(src.patterns)))
    files = sorted(p for pat in src.patterns for p in local.glob(f"**/{pat}") if p.is_file())
    if not files:
        raise BenchmarkError(f"{src.repo_id} has no files matching {src.patterns}")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(read_rows(f))
    return rows_to_problems(rows, problem_field, answer_field, name, f"hub:{src.repo_id}",
                            answer_from=src.answer_from)


def list_benchmarks(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """What resolves offline: each named benchmark (and any other file in the data dir)
    with its problem count and file, without touching the network."""
    out = []
    names = list(KNOWN_BENCHMARKS)
    ddir = resolve_data_dir(data_dir)
    if ddir is not None:
        stems = {FILE_ALIASES.get(n, n) for n in names}
        names += sorted(p.stem for p in ddir.iterdir()
                        if p.suffix in (".jsonl", ".parquet") and p.stem not in stems)
    for name in names:
        try:
            rows = load_problems(name, data_dir=data_dir, hub=False)
            where = "champ-dataset package" if name == "champ" else str(_offline_file(name, ddir))
            out.append({"name": name, "problems": len(rows), "source": where})
        except BenchmarkError as err:
            out.append({"name": name, "problems": 0, "source": None, "error": str(err).split(";")[0]})
    return out


def _offline_file(name: str, ddir: Path | None) -> Path | None:
    if ddir is None:
        return None
    for stem in (FILE_ALIASES.get(name, name), name):
        for ext in (".jsonl", ".parquet"):
            if (ddir / f"{stem}{ext}").is_file():
                return ddir / f"{stem}{ext}"
    return None
