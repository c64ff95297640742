"""`demix export` and `demix import-hf`: flags and the calls behind them (registered in cli.COMMANDS).

    demix export --checkpoint runs/x/checkpoints/base --output hf/base
    demix export --experiment x.yaml --mixture mixture.json --output hf/proxy
    demix import-hf --model hf/Qwen3-0.6B --save ckpt/qwen3 --tensor-model-parallel-size 2

Nothing heavy is imported here: `demix --help` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def export_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="a torch_dist checkpoint (save root, iter_* or bare directory; any TP/PP)")
    what.add_argument("--experiment", "--config", dest="config", type=Path,
                      help="experiment YAML: export the proxy of --mixture, merged from its components while streaming")
    parser.add_argument("--mixture", type=Path, help='JSON {component: weight} (with --experiment)')
    parser.add_argument("--output", type=Path, required=True, help="the Hugging Face model directory to create (must not exist)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (default 5GB; e.g. 500MB, 2GiB)")


def run_export(args: argparse.Namespace, experiment=None) -> None:
    """`experiment`: the loaded --experiment file (the command line loads it: cli.load_experiment_file)."""
    from megatron_demix.config.base import fail
    from megatron_demix.hf.export import export_checkpoint, export_mixture, parse_size

    shard = parse_size(args.max_shard_size)
    if args.checkpoint is not None:
        if args.mixture is not None:
            fail("--mixture", "goes with --experiment, not with --checkpoint")
        output = export_checkpoint(args.checkpoint, args.output, max_shard_bytes=shard)
    else:
        if args.mixture is None:
            fail("--mixture", f"missing: --experiment {args.config} exports the proxy of a mixture; give --mixture M.json")
        output = export_mixture(experiment, args.mixture, args.output, max_shard_bytes=shard)
    print(f"wrote {output} (load it with transformers.AutoModelForCausalLM.from_pretrained({str(output)!r}))")


def import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="a local Hugging Face Llama / Qwen2 / Qwen3 model directory")
    parser.add_argument("--save", type=Path, required=True, help="the Megatron save root to create (must not exist)")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1,
                        help="vocabulary padding and chunk layout of that TP (the checkpoint loads at any TP/PP)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128, help="vocabulary padding multiple, as Megatron-LM")
    from megatron_demix.runtime.dtypes import dtype_names

    parser.add_argument("--dtype", choices=("same", *dtype_names()), default="same", help="stored dtype (default: the model's)")


def run_import(args: argparse.Namespace) -> None:
    from megatron_demix.config.base import fail
    from megatron_demix.hf.import_hf import import_hf
    from megatron_demix.runtime.dtypes import torch_dtype

    for flag in ("tensor_model_parallel_size", "make_vocab_size_divisible_by"):
        if getattr(args, flag) < 1:
            fail("--" + flag.replace("_", "-"), f"{getattr(args, flag)} must be >= 1")
    dtype = None if args.dtype == "same" else torch_dtype(args.dtype)
    save = import_hf(args.model, args.save, tensor_parallel=args.tensor_model_parallel_size,
                     make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, dtype=dtype)
    print(f"wrote {save} (Megatron torch_dist, release); use it as a base with --pretrained-checkpoint {save}")
