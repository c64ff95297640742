"""Built-in corpora for the embedded default: made on any machine, with no downloads.

- `prose`: English text shipped with Python and Debian: the interactive-help topics of the
  Python documentation (`pydoc_data.topics`), the license texts in /usr/share/common-licenses,
  then the long docstrings of the standard-library modules (read with `ast`, nothing imported).
- `code`: standard-library Python sources (tests excluded), split into pieces of at most 8 KB.
- `math`: arithmetic and algebra problems with worked solutions, from a seeded generator.

Everything is taken in sorted order and cut at `megabytes`, so one Python install always yields
the same corpus. `write_builtin(name, path, megabytes)` writes it as JSONL (field `text`).
"""
from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from megatron_demix.runtime.files import atomic_write_text

CODE_PIECE_BYTES = 8192


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 300:
                yield doc


def prose_documents() -> Iterator[str]:
    import pydoc_data.topics

    for _, text in sorted(pydoc_data.topics.topics.items()):
        yield text.strip()
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        for path in sorted(p for p in licenses.iterdir() if p.is_file()):
            yield path.read_text(encoding="utf-8", errors="replace").strip()
    for path in _stdlib_files():
        yield from _docstrings(path)


def code_documents() -> Iterator[str]:
    for path in _stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        piece: list[str] = []
        size = 0
        for line in source.splitlines(keepends=True):
            piece.append(line)
            size += len(line)
            if size >= CODE_PIECE_BYTES:
                yield "".join(piece)
                piece, size = [], 0
        if piece:
            yield "".join(piece)


def _linear_equation(rng: random.Random) -> str:
    a, x, b = rng.randint(2, 12), rng.randint(-20, 20), rng.randint(-50, 50)
    c = a * x + b
    return (f"Problem: Solve {a}x + {b} = {c} for x.\n"
            f"Solution: Subtract {b} from both sides: {a}x = {c - b}. Divide by {a}: x = {x}.\n")


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(10, 999), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"Problem: Compute {a} {op} {b}.\nSolution: {a} {op} {b} = {value}.\n"


def _fraction_sum(rng: random.Random) -> str:
    from fractions import Fraction

    p, q = Fraction(rng.randint(1, 9), rng.randint(2, 12)), Fraction(rng.randint(1, 9), rng.randint(2, 12))
    common = p.denominator * q.denominator
    return (f"Problem: Add {p} and {q}.\nSolution: Over the common denominator {common}: "
            f"{p.numerator * q.denominator}/{common} + {q.numerator * p.denominator}/{common} = {p + q}.\n")


def _percentage(rng: random.Random) -> str:
    whole, percent = rng.randint(20, 2000), rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75])
    return (f"Problem: What is {percent}% of {whole}?\n"
            f"Solution: {percent}% is {percent}/100, so {whole} * {percent}/100 = {whole * percent / 100:g}.\n")


def _arithmetic_series(rng: random.Random) -> str:
    first, step, n = rng.randint(1, 20), rng.randint(1, 9), rng.randint(5, 40)
    last = first + (n - 1) * step
    return (f"Problem: Find the sum of the arithmetic sequence {first}, {first + step}, ..., {last} ({n} terms).\n"
            f"Solution: The sum is n(first + last)/2 = {n} * ({first} + {last}) / 2 = {n * (first + last) // 2}.\n")


def _quadratic(rng: random.Random) -> str:
    r1, r2 = rng.randint(-9, 9), rng.randint(-9, 9)
    b, c = -(r1 + r2), r1 * r2
    return (f"Problem: Solve x^2 + {b}x + {c} = 0.\n"
            f"Solution: Factor: (x - {r1})(x - {r2}) = 0, so x = {r1} or x = {r2}.\n")


MATH_GENERATORS: tuple[Callable[[random.Random], str], ...] = (
    _linear_equation, _arithmetic, _fraction_sum, _percentage, _arithmetic_series, _quadratic,
)


def math_documents(seed: int = 0) -> Iterator[str]:
    rng = random.Random(seed)
    while True:
        yield "\n".join(rng.choice(MATH_GENERATORS)(rng) for _ in range(rng.randint(3, 8)))


BUILTIN_SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "prose": prose_documents,
    "code": code_documents,
    "math": math_documents,
}


def builtin_documents(name: str, megabytes: float) -> Iterator[str]:
    """The documents of built-in corpus `name`, up to `megabytes` of UTF-8 text."""
    budget = int(megabytes * 1_000_000)
    for doc in BUILTIN_SOURCES[name]():
        if budget <= 0:
            return
        if doc:
            budget -= len(doc.encode())
            yield doc


def write_builtin(name: str, path: Path, megabytes: float) -> Path:
    """Write corpus `name` as JSONL at `path` (atomically); returns `path`."""
    lines = (json.dumps({"text": doc}, ensure_ascii=False) for doc in builtin_documents(name, megabytes))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
