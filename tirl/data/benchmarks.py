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

``gpqa_diamond`` (science transfer, multiple choice) is resolved on its own: a
``gpqa_diamond.csv`` / ``.jsonl`` / ``.parquet`` in the original GPQA schema in the data dir,
else the gated Hub dataset ``Idavidrein/gpqa`` with a token from ``HF_TOKEN``; see
:func:`load_gpqa_diamond` for the prompt format and the per-sample option shuffle.

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

KNOWN_BENCHMARKS = ("aime24", "aime25", "math500", "hmmt_feb25", "amc23", "gsm8k", "champ", "gpqa_diamond")


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
    if name in GPQA_NAMES:
        if (problem_field, answer_field) != ("problem", "answer"):
            raise BenchmarkError(
                f"gpqa_diamond reads the GPQA columns ({GPQA_QUESTION!r}, {GPQA_CORRECT!r}, ...); "
                f"problem_field={problem_field!r} / answer_field={answer_field!r} do not apply to it: "
                "leave them at their defaults"
            )
        probs = load_gpqa_diamond(data_dir, hub=hub)
        return probs[:limit] if limit else probs
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


# ---------------------------------------------------------------------------------------
# GPQA-Diamond (Rein et al. 2023): 198 graduate-level science questions, four options
#
# Prompt format (what the model sees; ``{A}``..``{D}`` are the options after the shuffle):
#
#     <Question>
#
#     A) {A}
#     B) {B}
#     C) {C}
#     D) {D}
#
#     Answer with the letter of the correct option in \boxed{}, for example \boxed{A}.
#
# The gold is that letter; ``tirl.reward`` grades a boxed ``B``, ``(B)`` or ``B.`` against it
# with its multiple-choice rule (a boxed option *text* is not matched: it counts incorrect).

GPQA_NAMES = ("gpqa_diamond", "gpqa-diamond")
GPQA_REPO = "Idavidrein/gpqa"
GPQA_FILE = "gpqa_diamond.csv"
GPQA_QUESTION = "Question"
GPQA_CORRECT = "Correct Answer"
GPQA_INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
GPQA_ID = "Record ID"
GPQA_DOMAIN = "High-level domain"
GPQA_LETTERS = "ABCD"
GPQA_INSTRUCTION = "Answer with the letter of the correct option in \\boxed{}, for example \\boxed{A}."


def gpqa_permutation(problem_id: str, sample: int, seed: int = 0) -> list[int]:
    """The option order of one sample: ``perm[j]`` is the index (0 = the correct answer,
    1-3 = the incorrect ones in file order) of the option shown at letter ``j``.

    Deterministic in ``(seed, problem_id, sample)`` (SHA-256, not Python's salted hash), so a
    rerun or a resumed eval shows every sample the same order, and the k samples of one
    problem see different orders.
    """
    import hashlib
    import random

    digest = hashlib.sha256(f"gpqa:{seed}:{problem_id}:{sample}".encode()).digest()
    perm = [0, 1, 2, 3]
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(perm)
    return perm


def gpqa_prompt(question: str, options: list[str]) -> str:
    """The documented prompt: the question, lettered options, the boxed-letter instruction."""
    lines = [question.strip(), ""]
    lines += [f"{GPQA_LETTERS[j]}) {opt.strip()}" for j, opt in enumerate(options)]
    lines += ["", GPQA_INSTRUCTION]
    return "\n".join(lines)


def gpqa_sample_variant(problem: dict[str, Any], sample: int, seed: int = 0) -> tuple[str, str]:
    """``(prompt, gold_letter)`` of sample ``sample`` of a GPQA problem from :func:`load_gpqa_diamond`."""
    choices = problem["choices"]
    perm = gpqa_permutation(str(problem["id"]), sample, seed)
    return gpqa_prompt(problem["question"], [choices[i] for i in perm]), GPQA_LETTERS[perm.index(0)]


def gpqa_rows_to_problems(rows: list[dict[str, Any]], where: str, seed: int = 0) -> list[dict[str, Any]]:
    """Problems from rows in the GPQA schema (``Question``, ``Correct Answer``,
    ``Incorrect Answer 1..3``, optional ``Record ID`` and ``High-level domain``).

    Each problem carries ``question`` and ``choices`` (correct first) so any sample's variant
    can be rebuilt; ``problem`` / ``answer`` are sample 0's prompt and gold letter.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    need = (GPQA_QUESTION, GPQA_CORRECT, *GPQA_INCORRECT)
    for i, row in enumerate(rows):
        missing = [f for f in need if row.get(f) in (None, "") or not str(row.get(f)).strip()]
        if missing:
            raise BenchmarkError(
                f"{where}: row {i + 1} lacks {', '.join(repr(m) for m in missing)} (it has: "
                f"{', '.join(sorted(map(str, row)))}); gpqa_diamond needs the GPQA columns "
                f"{', '.join(need)}"
            )
        pid = str(row.get(GPQA_ID) or f"gpqa_diamond-{i}")
        if pid in seen:
            pid = f"{pid}#{i}"
        seen.add(pid)
        choices = [str(row[GPQA_CORRECT]).strip()] + [str(row[f]).strip() for f in GPQA_INCORRECT]
        prob: dict[str, Any] = {"id": pid, "question": str(row[GPQA_QUESTION]).strip(),
                                "choices": choices, "source": "gpqa_diamond"}
        if row.get(GPQA_DOMAIN):
            prob["subject"] = str(row[GPQA_DOMAIN])
        prob["problem"], prob["answer"] = gpqa_sample_variant(prob, 0, seed)
        out.append(prob)
    return out


def _read_gpqa_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        import csv

        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    return read_rows(path)


def load_gpqa_diamond(data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR, hub: bool | None = None,
                      seed: int = 0) -> list[dict[str, Any]]:
    """GPQA-Diamond from ``<data_dir>/gpqa_diamond.{csv,jsonl,parquet}`` or the gated Hub dataset.

    The Hub copy (``Idavidrein/gpqa``, file ``gpqa_diamond.csv``) needs its terms accepted on
    huggingface.co and a token in ``HF_TOKEN``. When neither source works the error says both
    ways to get the data.
    """
    looked: list[str] = []
    ddir = resolve_data_dir(data_dir)
    if ddir is not None:
        for ext in (".csv", ".jsonl", ".parquet"):
            cand = ddir / f"gpqa_diamond{ext}"
            looked.append(str(cand))
            if cand.is_file():
                rows = _read_gpqa_file(cand)
                if not rows:
                    raise BenchmarkError(f"{cand} holds no problems")
                return gpqa_rows_to_problems(rows, str(cand), seed)
    else:
        looked.append(f"data dir {str(data_dir)!r} (not found)")
    if _hub_allowed(hub):
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        try:
            from huggingface_hub import hf_hub_download

            local = hf_hub_download(GPQA_REPO, GPQA_FILE, repo_type="dataset", token=token)
            return gpqa_rows_to_problems(_read_gpqa_file(Path(local)), f"hub:{GPQA_REPO}", seed)
        except BenchmarkError:
            raise
        except Exception as err:  # noqa: BLE001 — gated, offline, no token: say it below
            token_note = "HF_TOKEN set" if token else "HF_TOKEN not set"
            looked.append(f"Hugging Face Hub {GPQA_REPO}/{GPQA_FILE} ({token_note}; {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})")
    else:
        looked.append("Hugging Face Hub (disabled: HF_HUB_OFFLINE or hub=False)")
    raise BenchmarkError(
        "benchmark 'gpqa_diamond' not found. Looked at: " + "; ".join(looked) + ". It is gated on the "
        f"Hub: accept its terms at https://huggingface.co/datasets/{GPQA_REPO}, then set HF_TOKEN to "
        f"a token of that account; or put {GPQA_FILE} (columns {GPQA_QUESTION!r}, {GPQA_CORRECT!r}, "
        f"{', '.join(repr(c) for c in GPQA_INCORRECT)}) in the data dir ([data] data_dir)."
    )


def problem_for_sample(problem: dict[str, Any], sample: int, seed: int = 0) -> tuple[str, str]:
    """``(prompt, gold)`` that sample ``sample`` of ``problem`` should see.

    A GPQA problem (it has ``choices``) gets its own option order per sample
    (:func:`gpqa_sample_variant`); any other problem is the same for every sample.
    """
    if isinstance(problem.get("choices"), list) and "question" in problem:
        return gpqa_sample_variant(problem, sample, seed)
    return str(problem["problem"]), str(problem["answer"])
