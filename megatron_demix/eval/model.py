"""`megatron-demix`: an lm-eval model backed by this project's megatron-core GPTModel.

    python -m megatron_demix.eval --model megatron-demix --model_args pretrained=runs/demo/checkpoints/base \
        --tasks demix_code_choice --include_path runs/demo/eval/tasks

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

Scores: log-probabilities are taken over the tokenizer's vocabulary (the padded rows of the
embedding excluded), at the continuation positions only (see eval/forward.py), in fp32.
"""
from __future__ import annotations

import difflib
import json
import logging

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from megatron_demix.eval.config import EvalInputError
from megatron_demix.eval.forward import selected_logits, target_log_probs
from megatron_demix.eval.generate import greedy_generate

log = logging.getLogger(__name__)


def _split(value) -> list[str]:
    return [v for v in str(value).split(";") if v.strip()]


MODEL_ARGS = ("pretrained", "components", "weights", "experiment", "mixture", "tokenizer", "batch_size", "max_batch_size",
              "max_length", "max_gen_toks", "dtype", "device", "kv_cache")
"""Every model_arg `megatron-demix` takes (`max_batch_size`: lm-eval's flag, for batch_size=auto only: ignored)."""


def _check_names(names) -> None:
    """An unknown model_arg (`dtpye=`) is refused with the closest valid name, not silently ignored."""
    for name in names:
        close = difflib.get_close_matches(name, MODEL_ARGS, n=1)
        hint = f"did you mean {close[0]}=?" if close else f"valid: {', '.join(MODEL_ARGS)}"
        raise EvalInputError(f"model_args {name}=: unknown argument of megatron-demix; {hint}")


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "0", "false", "no"):
        return str(value).lower() in ("1", "true", "yes")
    raise EvalInputError(f"model_args {name}={value!r}: give true or false")


def _positive_int(name: str, value, hint: str = "") -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise EvalInputError(f"model_args {name}={value!r}: give a positive integer{hint}")
    return number


def _dtype(value) -> torch.dtype | None:
    if value in (None, "auto"):
        return None
    from megatron_demix.runtime.dtypes import SPELLINGS, torch_dtype

    if str(value) not in SPELLINGS:
        raise EvalInputError(f"model_args dtype={value!r}: choose one of auto, {', '.join(SPELLINGS)}")
    return torch_dtype(str(value))


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
    params_dtype, mixture = _dtype(dtype), _mixture(mixture) if mixture else mixture
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


class MegatronDemixLM(TemplateLM):
    """lm-eval's TemplateLM over a megatron-core GPTModel (see the module docstring for model_args)."""

    def __init__(self, pretrained=None, components=None, weights=None, experiment=None, mixture=None,
                 tokenizer=None, batch_size=8, max_length=None, max_gen_toks=256, dtype=None, device=None,
                 kv_cache=True, max_batch_size=None, model=None, **unknown):
        super().__init__()
        _check_names(unknown)
        _select_device(device)
        if model is None:
            model, tokenizer, experiment = build_from_args(pretrained, components, weights, experiment, mixture, tokenizer, dtype)
        self.model, self.tokenizer, self.experiment = model, tokenizer, experiment
        self.batch_size = _positive_int("batch_size", batch_size, " ('auto' is not supported)")
        self._max_length = _positive_int("max_length", max_length) if max_length else experiment.model.seq_length
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.kv_cache = _as_bool("kv_cache", kv_cache)

    @classmethod
    def from_model(cls, model, tokenizer, experiment, **kwargs) -> "MegatronDemixLM":
        """Wrap a model already in memory (the many-mixtures loop refills its weights in place)."""
        return cls(model=model, tokenizer=tokenizer, experiment=experiment, **kwargs)

    # --- tokenizer ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, **_kwargs) -> list[int]:
        return self.tokenizer.tokenize(string)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.detokenize(tokens)

    # --- scoring -----------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(sum of log p(continuation | context), greedy?) per request, batched longest first.

        The model reads (context + continuation)[:-1], truncated on the left to max_length; the
        continuation's j-th token is predicted by input position len(input) - len(continuation) + j,
        so the first continuation token is scored from the context's last position.
        """
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in collator.get_batched(n=override_bs or self.batch_size):
            inputs, spans = [], []
            for _, context, continuation in chunk:
                if not continuation:
                    raise EvalInputError("a loglikelihood request has an empty continuation")
                whole = (context + continuation)[-(self.max_length + 1):]
                inputs.append(whole[:-1])
                spans.append((len(whole) - 1 - len(continuation), continuation))
            width = max(map(len, inputs))
            tokens = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
            rows, cols, targets = [], [], []
            for row, (ids, (first, continuation)) in enumerate(zip(inputs, spans)):
                tokens[row, : len(ids)] = torch.tensor(ids)
                rows += [row] * len(continuation)
                cols += range(first, first + len(continuation))
                targets += continuation
            picked, greedy = target_log_probs(selected_logits(self.model, tokens, rows, cols, self.tokenizer.vocab_size), targets)
            start = 0
            for request, (_, continuation) in zip(chunk, spans):
                end = start + len(continuation)
                answer = (float(picked[start:end].sum()), bool(greedy[start:end].all()))
                results.append(answer)
                if request[0] is not None:
                    self.cache_hook.add_partial("loglikelihood", request[0], answer)
                start = end
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents in disjoint windows of at most max_length tokens
        (the first token is predicted from the end-of-document token), all windows batched together."""
        windows, owners = [], []
        for number, request in enumerate(requests):
            (text,) = request.args
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(number)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for number, (log_prob, _) in zip(owners, scores):
            totals[number] += log_prob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, batched by identical generation settings, longest prompts first."""
        collator = Collator([r.args for r in requests], sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
                            group_fn=lambda a: a[1], group_by="gen_kwargs")
        outputs = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, settings = zip(*chunk)
            kwargs = dict(settings[0])
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id]))
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.pop("do_sample", False) and kwargs.get("temperature", 0) not in (0, 0.0):
                raise EvalInputError("generate_until: megatron-demix generates greedily; the task asks for sampling")
            if max_new >= self.max_length:
                raise EvalInputError(f"max_gen_toks={max_new} must be below max_length={self.max_length}")
            prompts = [self.tok_encode(c)[-(self.max_length - max_new):] or [self.prefix_token_id] for c in contexts]

            def done(row, ids, until=until):
                text = self.tok_decode(ids)
                return ids[-1] == self.eot_token_id or any(stop in text for stop in until)

            generated = greedy_generate(self.model, prompts, max_new, self.tokenizer.vocab_size, done, self.kv_cache)
            for context, setting, ids in zip(contexts, settings, generated):
                text = self.tok_decode(ids)
                for stop in until:
                    text = text.split(stop)[0]
                outputs.append(text)
                self.cache_hook.add_partial("generate_until", (context, setting), text)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(outputs)

