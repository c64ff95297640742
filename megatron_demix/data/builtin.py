"""Built-in corpora for the embedded default, in the paper's tiered shape: made on any machine, no downloads.

- `prose` (general data): English text shipped with Python and Debian: the interactive-help topics
  of the Python documentation (`pydoc_data.topics`), the license texts in /usr/share/common-licenses,
  then the long docstrings of the standard-library modules whose source is in `code_medium` or
  `code_low` (those tiers drop their docstrings, so no text is in two corpora).
- `code_high`: standard-library Python sources as shipped: documented, commented, formatted.
- `code_medium`: other standard-library sources with docstrings and comments stripped (`ast.unparse`).
- `code_low`: yet other sources, stripped, then damaged: lines shuffled in small blocks and about
  one character in 25 replaced by noise.
- `math_high`: arithmetic and algebra problems with worked step-by-step solutions (a seeded generator).
- `math_medium`: other problems with their answers only.
- `math_low`: other problems with typos, and half of the answers wrong.
`code` and `math` (the names of earlier releases) are `code_high` and `math_high`.

Each standard-library file belongs to one code tier (by a hash of its path), every generated
problem is made once across all tiers, and a document sharing a normalised text window
(data/contamination.py) with any document kept before it, in any corpus, is dropped: each document
lives in exactly one corpus, once, and a held-out split never repeats a training split.

Sizes follow the paper's shape (its highest tiers are the smallest): `prose` and the medium tiers
have `megabytes` of text, the high tiers half of it and the low tiers one and a half times. All
corpora are made together, in CORPORA's order (the window check needs the earlier ones), and each
is cut at its size, so one Python install always yields the same corpora.
`write_builtin(name, path, megabytes)` writes one as JSONL (field `text`).
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import sysconfig
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from megatron_demix.data.contamination import WindowIndex
from megatron_demix.runtime.files import atomic_write_text

CORPORA = ("prose", "code_high", "code_medium", "code_low", "math_high", "math_medium", "math_low")
"""Every built-in corpus, in the order they are made (a later one drops what an earlier one holds)."""
ALIASES = {"code": "code_high", "math": "math_high"}
SIZE_FACTORS = {"high": 0.5, "medium": 1.0, "low": 1.5}
"""Size of a tier against `megabytes` (the paper: the highest tiers are the smallest)."""
CODE_TIER_SHARES = {"code_high": 2, "code_medium": 4, "code_low": 6}
"""How the standard-library files are divided between the code tiers (stripping shrinks a file)."""
CODE_PIECE_BYTES = 1024
"""Longest code document: a file is cut at line ends into function-sized pieces (a high tier, the smallest,
still holds out about ten of them for the evaluation tasks)."""
LOW_BLOCK_LINES = 6
LOW_NOISE = 0.04
"""Share of non-space characters of a low tier replaced by noise."""


def corpus_size(name: str, megabytes: float) -> int:
    """Bytes of text in built-in corpus `name` made at `megabytes`."""
    name = ALIASES.get(name, name)
    return int(megabytes * 1_000_000 * SIZE_FACTORS.get(name.rsplit("_", 1)[-1], 1.0))


# ----------------------------------------------------------------------------- standard-library sources
@lru_cache(maxsize=1)
def _stdlib_files() -> dict[str, list[Path]]:
    """Code tier -> its standard-library files (tests excluded), sorted; each file in one tier."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    tiers: dict[str, list[Path]] = {tier: [] for tier in CODE_TIER_SHARES}
    slots = [tier for tier, share in CODE_TIER_SHARES.items() for _ in range(share)]
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if not skip.intersection(relative.parts):
            digest = hashlib.blake2b(relative.as_posix().encode(), digest_size=8).digest()
            tiers[slots[int.from_bytes(digest, "little") % len(slots)]].append(path)
    return tiers


def _parse(path: Path) -> tuple[str, ast.Module] | None:
    try:
        source = path.read_text(encoding="utf-8")
        return source, ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _documented(tree: ast.Module) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            yield node


def _docstrings(tree: ast.Module) -> Iterator[str]:
    for node in _documented(tree):
        doc = ast.get_docstring(node)
        if len(doc) >= 300:
            yield doc


def _stripped(tree: ast.Module) -> str:
    """The source without docstrings or comments (`ast.unparse` writes no comments)."""
    for node in _documented(tree):
        node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def _pieces(source: str) -> Iterator[str]:
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


def _damaged(text: str, rng: random.Random) -> str:
    """Lines shuffled within blocks of LOW_BLOCK_LINES, and LOW_NOISE of the other characters replaced."""
    lines = text.splitlines()
    blocks = [lines[i:i + LOW_BLOCK_LINES] for i in range(0, len(lines), LOW_BLOCK_LINES)]
    for block in blocks:
        rng.shuffle(block)
    shuffled = "\n".join(line for block in blocks for line in block)
    return "".join(rng.choice("~`^|@$#%&!?;:") if not c.isspace() and rng.random() < LOW_NOISE else c
                   for c in shuffled) + "\n"


def _code_tier(tier: str) -> Iterator[str]:
    for path in _stdlib_files()[tier]:
        parsed = _parse(path)
        if parsed is None:
            continue
        source, tree = parsed
        if tier == "code_high":
            yield from _pieces(source)
            continue
        rng = random.Random(path.name)
        for piece in _pieces(_stripped(tree)):
            yield piece if tier == "code_medium" else _damaged(piece, rng)


def prose_documents() -> Iterator[str]:
    import pydoc_data.topics

    for _, text in sorted(pydoc_data.topics.topics.items()):
        yield text.strip()
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        for path in sorted(p for p in licenses.iterdir() if p.is_file()):
            yield path.read_text(encoding="utf-8", errors="replace").strip()
    files = _stdlib_files()
    for path in files["code_medium"] + files["code_low"]:  # sources whose tiers drop their docstrings
        parsed = _parse(path)
        if parsed is not None:
            yield from _docstrings(parsed[1])


# ----------------------------------------------------------------------------- generated mathematics
# Each generator draws one problem: (statement, worked steps, answer).
def _linear_equation(rng: random.Random) -> tuple[str, str, str]:
    a, x, b = rng.randint(2, 19), rng.randint(-40, 40), rng.randint(-99, 99)
    c = a * x + b
    return (f"Solve {a}x + {b} = {c} for x.",
            f"Subtract {b} from both sides: {a}x = {c - b}. Divide both sides by {a}: x = {x}.", f"x = {x}")


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = rng.randint(10, 999), rng.randint(2, 99), rng.randint(2, 9)
    op = rng.choice(["+", "-"])
    inner = a + b if op == "+" else a - b
    return (f"Compute ({a} {op} {b}) * {c}.",
            f"First the parentheses: {a} {op} {b} = {inner}. Then multiply: {inner} * {c} = {inner * c}.", str(inner * c))


def _fraction_sum(rng: random.Random) -> tuple[str, str, str]:
    p = Fraction(rng.randint(1, 19), rng.randint(2, 24))
    q = Fraction(rng.randint(1, 19), rng.randint(2, 24))
    common = p.denominator * q.denominator
    return (f"Add {p} and {q}.",
            f"Write both over the common denominator {common}: {p.numerator * q.denominator}/{common}"
            f" + {q.numerator * p.denominator}/{common} = {p.numerator * q.denominator + q.numerator * p.denominator}/{common}."
            f" Simplify: {p + q}.", str(p + q))


def _percentage(rng: random.Random) -> tuple[str, str, str]:
    whole, percent = rng.randint(20, 5000), rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 80])
    return (f"What is {percent}% of {whole}?",
            f"{percent}% means {percent}/100. Multiply: {whole} * {percent} = {whole * percent}."
            f" Divide by 100: {whole * percent / 100:g}.", f"{whole * percent / 100:g}")


def _arithmetic_series(rng: random.Random) -> tuple[str, str, str]:
    first, step, n = rng.randint(1, 50), rng.randint(1, 12), rng.randint(5, 60)
    last = first + (n - 1) * step
    total = n * (first + last) // 2
    return (f"Find the sum of the arithmetic sequence {first}, {first + step}, ..., {last} ({n} terms).",
            f"Pair the first and last terms: {first} + {last} = {first + last}. With {n} terms the sum is"
            f" {n} * {first + last} / 2 = {total}.", str(total))


def _quadratic(rng: random.Random) -> tuple[str, str, str]:
    r1, r2 = sorted((rng.randint(-40, 40), rng.randint(-40, 40)))
    return (f"Solve x^2 + {-(r1 + r2)}x + {r1 * r2} = 0.",
            f"The roots have sum {r1 + r2} and product {r1 * r2}, so they are {r1} and {r2}:"
            f" (x - {r1})(x - {r2}) = 0.", f"x = {r1} or x = {r2}")


def _mean(rng: random.Random) -> tuple[str, str, str]:
    values = [rng.randint(1, 99) for _ in range(rng.randint(3, 7))]
    total = sum(values)
    return (f"Find the mean of {', '.join(map(str, values))}.",
            f"Add them: {' + '.join(map(str, values))} = {total}. Divide by {len(values)}:"
            f" {Fraction(total, len(values))}.", str(Fraction(total, len(values))))


MATH_GENERATORS: tuple[Callable[[random.Random], tuple[str, str, str]], ...] = (
    _linear_equation, _arithmetic, _fraction_sum, _percentage, _arithmetic_series, _quadratic, _mean,
)


def _wrong(answer: str, rng: random.Random) -> str:
    """The answer with one digit changed (a plausible wrong answer)."""
    digits = [i for i, c in enumerate(answer) if c.isdigit()]
    if not digits:
        return answer
    i = rng.choice(digits)
    return answer[:i] + rng.choice([d for d in "0123456789" if d != answer[i]]) + answer[i + 1:]


def _typos(text: str, rng: random.Random) -> str:
    return "".join(rng.choice("xq ") if c.isalpha() and rng.random() < 0.06 else c for c in text)


def _math_problem(tier: str, problem: tuple[str, str, str], rng: random.Random) -> str:
    statement, steps, answer = problem
    if tier == "math_high":
        return f"Problem: {statement}\nSolution: {steps} Answer: {answer}.\n"
    if tier == "math_medium":
        return f"Problem: {statement}\nAnswer: {answer}.\n"
    return f"Problem: {_typos(statement, rng)}\nAnswer: {_wrong(answer, rng) if rng.random() < 0.5 else answer}.\n"


def _math_tier(tier: str, rng: random.Random, seen: set[str]) -> Iterator[str]:
    """Documents of 3-8 problems, none made before for any tier (`seen` holds every statement)."""
    while True:
        problems, count = [], rng.randint(3, 8)
        while len(problems) < count:
            problem = rng.choice(MATH_GENERATORS)(rng)
            if problem[0] not in seen:
                seen.add(problem[0])
                problems.append(_math_problem(tier, problem, rng))
        yield "\n".join(problems)


# ----------------------------------------------------------------------------- all corpora, deduplicated
@lru_cache(maxsize=1)
def builtin_corpora(megabytes: float) -> dict[str, tuple[str, ...]]:
    """Every built-in corpus at `megabytes` (see the module docstring for the sizes), made together."""
    index, corpora = WindowIndex(), {}
    rng, seen = random.Random(0), set()
    for name in CORPORA:
        budget, kept = corpus_size(name, megabytes), []
        documents = (prose_documents() if name == "prose" else
                     _code_tier(name) if name.startswith("code") else _math_tier(name, rng, seen))
        for doc in documents:
            if budget <= 0:
                break
            if doc.strip() and index.add_if_new(doc):
                kept.append(doc)
                budget -= len(doc.encode())
        corpora[name] = tuple(kept)
    return corpora


def builtin_documents(name: str, megabytes: float) -> tuple[str, ...]:
    """The documents of built-in corpus `name` (or an alias) made at `megabytes`."""
    return builtin_corpora(float(megabytes))[ALIASES.get(name, name)]


def write_builtin(name: str, path: Path, megabytes: float) -> Path:
    """Write corpus `name` as JSONL at `path` (atomically); returns `path`."""
    lines = (json.dumps({"text": doc}, ensure_ascii=False) for doc in builtin_documents(name, megabytes))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
