"""`demix-lm-eval`: lm-eval's own command line with the `megatron-demix` model registered; every lm-eval flag works.

    demix-lm-eval --model megatron-demix --model_args pretrained=runs/demo/checkpoints/base,batch_size=8 \
        --tasks demix_code_choice,demix_code_bpb --include_path runs/demo/eval/tasks
    demix-lm-eval --model megatron-demix --model_args experiment=configs/demo.yaml,mixture=mix.json --tasks arc_easy
    demix-lm-eval ls tasks                          # lm-eval's subcommands too
    (or `python -m megatron_demix.commands.lm_eval ...`; offline tasks: HF_DATASETS_OFFLINE=1)

`lm_eval --model megatron-demix` cannot work: lm-eval has no plugin discovery, a model outside its package exists
only once registered in the running process. The model lives here, above the stages, because its model_args
read experiment files; eval/model.py scores with a model already in memory.

model_args (one of the three sources of weights):
- `pretrained=DIR`: a save root, an `iter_*` directory or a merged proxy, saved at any TP/PP;
  loaded by resharding into a TP = PP = 1 model (evaluation runs in one process).
- `components=D1;D2;...,weights=w1;w2;...`: merge-on-load, linear, weights normalised to sum 1.
- `experiment=X.yaml,mixture=M.json` (or `mixture={"code":0.3,...}` in Python): merge-on-load of
  the experiment's components with its `merge:` section (method, scale, normalize, dtype: the values
  `tools/merge/run.py` writes for that mixture); nothing is written in either case.
and `experiment=` (architecture and tokenizer when the checkpoint's common state lacks them),
`tokenizer=` (default: the experiment's), `batch_size` (default 8), `max_length` (default: the
model's seq_length), `max_gen_toks` (256), `dtype` (bf16 on GPU hosts, fp32 on CPU), `device`
(the default device; `cpu` forces the CPU), `kv_cache` (true).
"""
from __future__ import annotations

import difflib
import json
import logging
import sys

import torch

from megatron_demix.eval.config import EvalInputError
from megatron_demix.eval.model import GPTModelLM, parse_dtype

log = logging.getLogger(__name__)

MODEL_NAME = "megatron-demix"
TARGET = "megatron_demix.commands.lm_eval:MegatronDemixLM"
SETTINGS = ("batch_size", "max_length", "max_gen_toks", "kv_cache")
"""The model_args GPTModelLM takes as they are."""
MODEL_ARGS = ("pretrained", "components", "weights", "experiment", "mixture", "tokenizer", "dtype", "device",
              "max_batch_size", *SETTINGS)
"""Every model_arg `megatron-demix` takes (`max_batch_size`: lm-eval's flag, for batch_size=auto only: ignored)."""


def _split(value) -> list[str]:
    return [v for v in str(value).split(";") if v.strip()]


def _check_names(names) -> None:
    """An unknown model_arg (`dtpye=`) is refused with the closest valid name, not silently ignored."""
    for name in names:
        close = difflib.get_close_matches(name, MODEL_ARGS, n=1)
        hint = f"did you mean {close[0]}=?" if close else f"valid: {', '.join(MODEL_ARGS)}"
        raise EvalInputError(f"model_args {name}=: unknown argument of megatron-demix; {hint}")


def _mixture(value) -> dict:
    if isinstance(value, dict):
        return value
    text = str(value)
    if not text.lstrip().startswith("{"):
        return text  # a file path: read_mixture reads it
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise EvalInputError(f"model_args mixture={text!r}: not a JSON object ({error.msg}); give"
                             ' {"candidate": share, ...} or a JSON file') from None


def build_from_args(pretrained=None, components=None, weights=None, experiment=None, mixture=None,
                    tokenizer=None, dtype=None):
    """(model, tokenizer, experiment) for the model_args; errors name the argument."""
    from megatron_demix.data.tokenizer import load_tokenizer
    from megatron_demix.experiment import checkpoint_experiment, load_experiment
    from megatron_demix.merge.proxy import checkpoints_proxy
    from megatron_demix.merge.sources import fill_model
    from megatron_demix.model.inference import inference_model, load_for_inference

    sources = [name for name, value in (("pretrained", pretrained), ("components", components), ("mixture", mixture)) if value]
    if len(sources) != 1:
        raise EvalInputError(
            f"model_args: give exactly one of pretrained=DIR, components=D1;D2,weights=w1;w2 or"
            f" experiment=X.yaml,mixture=M.json (got {', '.join(sources) or 'none'})"
        )
    params_dtype, mixture = parse_dtype(dtype), _mixture(mixture) if mixture else mixture
    config = load_experiment(experiment) if experiment else None
    if mixture and config is None:
        raise EvalInputError("model_args mixture= needs experiment=X.yaml (it names the component checkpoints)")
    if pretrained:
        config = config or checkpoint_experiment(pretrained)
        tok = load_tokenizer(tokenizer or config.paths.tokenizer)
        model = load_for_inference(pretrained, config.model, tok.vocab_size, seed=config.training.seed, dtype=params_dtype)
        return model, tok, config
    if components:
        paths = _split(components)
        try:
            given = [float(w) for w in _split(weights or "")]
        except ValueError:
            raise EvalInputError(f"model_args weights={weights!r}: expected numbers separated by ';' (e.g. 0.3;0.7)") from None
        if len(given) != len(paths):
            raise EvalInputError(
                f"model_args weights={weights!r} gives {len(given)} weight(s) for the {len(paths)} components"
                f" ({'; '.join(paths)}); give one weight per component, separated by ';'"
            )
        proxy = checkpoints_proxy(paths, given)  # linear, normalised: MergeConfig's defaults
        config = config or checkpoint_experiment(paths[0])
    else:
        proxy = config.proxy(mixture)
    tok = load_tokenizer(tokenizer or config.paths.tokenizer)
    weights, source = proxy.weights, proxy.open()
    try:
        model = inference_model(config.model, tok.vocab_size, seed=config.training.seed, dtype=params_dtype)
        fill_model(model, source, weights)
    finally:
        source.close()
    return model, tok, config


def _select_device(device) -> None:
    """`device=cuda:N` picks the GPU; `cpu` is only honoured where no GPU is visible (device choice is
    process-wide in runtime/device.py: hide the GPUs with CUDA_VISIBLE_DEVICES= to evaluate on the CPU)."""
    if device is None:
        return
    device = str(device)
    gpu = torch.cuda.is_available()
    if device.startswith("cuda"):
        if not gpu:  # lm-eval's CLI passes --device cuda:0 by default, also on CPU hosts
            log.warning("device=%s: this host has no CUDA device; evaluating on the CPU", device)
            return
        torch.cuda.set_device(torch.device(device))
    elif device == "cpu" and gpu:
        raise EvalInputError("model_args device=cpu on a GPU host: run with CUDA_VISIBLE_DEVICES= to evaluate on the CPU")
    elif device not in ("cpu",):
        raise EvalInputError(f"model_args device={device!r}: give cpu, cuda or cuda:N")


class MegatronDemixLM(GPTModelLM):
    """`megatron-demix` as lm-eval builds it from model_args (see the module docstring)."""

    def __init__(self, pretrained=None, components=None, weights=None, experiment=None, mixture=None,
                 tokenizer=None, dtype=None, device=None, max_batch_size=None, **settings):
        _check_names(name for name in settings if name not in SETTINGS)  # before any weights are read
        _select_device(device)
        model, tok, config = build_from_args(pretrained, components, weights, experiment, mixture, tokenizer, dtype)
        super().__init__(model, tok, config, **settings)


def register() -> None:
    """Add `megatron-demix` to lm-eval's model registry as a lazy placeholder (imported on first use). lm-eval's own
    backends are imported first: `get_model` imports them only while the registry is empty, so registering first
    would hide `hf`, `vllm`, ... from the command line."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


def main(argv=None) -> None:
    """Exit status as every demix command's (runtime/errors.py): a bad model_arg or checkpoint is one line, exit 2."""
    from lm_eval.__main__ import cli_evaluate

    from megatron_demix.runtime.errors import exit_process, run_command

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    exit_process(run_command("demix-lm-eval", cli_evaluate))


if __name__ == "__main__":
    main()
