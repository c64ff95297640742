"""A synthetic evaluation harness for the search tests (an `eval.command`): known optimum plus noise.

    python tests/search/synthetic_eval.py MIXTURE.json OUTPUT.json --optimum a=0.2,b=0.5,c=0.3
        [--noise 0.01] [--seed 0] [--counter FILE] [--sleep S] [--fail nan|exit|nojson] [--fail-ids-file FILE]

Writes {"quality": 1 - 4 |x - x*|^2 + noise, "closeness": 1 - |x - x*|_1 + noise}: two smooth scores
that are both highest at x*, so every domain weighting has the optimum x*. The noise is a
deterministic function of the mixture and --seed. --counter appends one line per evaluation (the
tests count evaluations with it). --fail makes the mixtures whose name (the directory holding
MIXTURE.json) is listed in --fail-ids-file fail that way: `exit` (status 3), `nojson` (exit 0,
nothing written) or `nan`; a listed name followed by `:N` fails only its first N evaluations.
Standard library only: it starts fast.
"""
import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path


def true_scores(mixture: dict, optimum: dict) -> dict:
    squared = sum((mixture.get(k, 0.0) - v) ** 2 for k, v in optimum.items())
    l1 = sum(abs(mixture.get(k, 0.0) - v) for k, v in optimum.items())
    return {"quality": 1 - 4 * squared, "closeness": 1 - l1}


def parse_optimum(text: str) -> dict:
    return {k: float(v) for k, v in (part.split("=") for part in text.split(","))}


def should_fail(name: str, ids_file: str | None, counter: str | None) -> bool:
    if not ids_file or not Path(ids_file).exists():
        return False
    for line in Path(ids_file).read_text().split():
        listed, _, times = line.partition(":")
        if listed == name:
            if not times:
                return True
            seen = sum(1 for row in Path(counter).read_text().splitlines() if row.startswith(name + " ")) if counter and Path(counter).exists() else 0
            return seen <= int(times)
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mixture")
    parser.add_argument("output")
    parser.add_argument("--optimum", required=True)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counter")
    parser.add_argument("--fail", choices=("nan", "exit", "nojson"))
    parser.add_argument("--fail-ids-file")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each evaluation takes")
    args = parser.parse_args()
    time.sleep(args.sleep)
    mixture = json.loads(Path(args.mixture).read_text())
    name = Path(args.mixture).parent.name
    if args.counter:
        with open(args.counter, "a") as f:
            f.write(f"{name} {json.dumps(mixture, sort_keys=True)}\n")
    scores = true_scores(mixture, parse_optimum(args.optimum))
    digest = hashlib.sha256(f"{args.seed} {json.dumps(mixture, sort_keys=True)}".encode()).digest()
    rng = random.Random(digest)
    scores = {k: v + rng.gauss(0, args.noise) for k, v in scores.items()}
    if args.fail and should_fail(name, args.fail_ids_file, args.counter):
        print(f"synthetic failure ({args.fail}) for {name}", file=sys.stderr)
        if args.fail == "exit":
            return 3
        if args.fail == "nojson":
            return 0
        scores["quality"] = math.nan
    Path(args.output).write_text(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
