"""lm-eval's TemplateLM over a megatron-core GPTModel already in memory: the many-mixtures loop (eval/proxies.py)
refills its weights in place; `megatron-demix` (commands/lm_eval.py) loads them from model_args first.

Scores: log-probabilities are taken over the tokenizer's vocabulary (the padded rows of the
embedding excluded), at the continuation positions only (see eval/forward.py), in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from megatron_demix.eval.config import EvalInputError
from megatron_demix.eval.forward import selected_logits, target_log_probs
from megatron_demix.eval.generate import greedy_generate


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


def parse_dtype(value) -> torch.dtype | None:
    """A model_args or eval.dtype spelling as a torch dtype; None (auto) leaves the host's default."""
    if value in (None, "auto"):
        return None
    from megatron_demix.runtime.dtypes import SPELLINGS, torch_dtype

    if str(value) not in SPELLINGS:
        raise EvalInputError(f"model_args dtype={value!r}: choose one of auto, {', '.join(SPELLINGS)}")
    return torch_dtype(str(value))


@dataclass(frozen=True)
class Batch:
    """One forward pass of `_loglikelihood_tokens`: right-padded inputs and the positions it scores."""

    order: list[int]
    """Each row's request, as its index in the request list."""
    tokens: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    """(rows[i], cols[i]) predicts targets[i]; row r's targets are the next lengths[r] of them."""
    targets: torch.Tensor
    lengths: list[int]


class GPTModelLM(TemplateLM):
    """lm-eval's TemplateLM over a megatron-core GPTModel; `experiment` gives the default max_length (its seq_length)."""

    def __init__(self, model, tokenizer, experiment, batch_size=8, max_length=None, max_gen_toks=256, kv_cache=True,
                 greedy: bool = True):
        """`greedy`: whether log-likelihood answers carry the greedy flag (else False): the many-mixtures loop asks
        for none when no task reads it (eval/proxies.py: reads_greedy): it costs a pass over every scored logit."""
        super().__init__()
        self.greedy = greedy
        self.model, self.tokenizer, self.experiment = model, tokenizer, experiment
        self.batch_size = _positive_int("batch_size", batch_size, " ('auto' is not supported)")
        self._max_length = _positive_int("max_length", max_length) if max_length else experiment.model.seq_length
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.kv_cache = _as_bool("kv_cache", kv_cache)
        self._prepared: dict[tuple, list[Batch]] = {}

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
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              need_greedy: bool | None = None):
        """(sum of log p(continuation | context), greedy?) per request, batched longest first. Without
        `need_greedy` (default: self.greedy; rolling windows: lm-eval drops it) greedy is not computed but
        reported False (lm-eval's multiple-choice scoring unpacks it even when no metric reads it), and no
        answer goes to lm-eval's response cache.

        The model reads (context + continuation)[:-1], truncated on the left to max_length; the
        continuation's j-th token is predicted by input position len(input) - len(continuation) + j,
        so the first continuation token is scored from the context's last position.
        """
        need_greedy = self.greedy if need_greedy is None else need_greedy
        results = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for batch in self._batches(requests, override_bs or self.batch_size):
            logits = selected_logits(self.model, batch.tokens, batch.rows, batch.cols, self.tokenizer.vocab_size)
            picked, greedy = target_log_probs(logits, batch.targets, need_greedy)
            pieces = zip(picked.split(batch.lengths), greedy.split(batch.lengths) if need_greedy else [None] * len(batch.order))
            for index, (scores, flags) in zip(batch.order, pieces):
                answer = (float(scores.sum()), flags is not None and bool(flags.all()))
                results[index] = answer
                if requests[index][0] is not None and flags is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            bar.update(len(batch.order))
        bar.close()
        return results

    def _batches(self, requests, size: int) -> list[Batch]:
        """The model's inputs for `requests`, in batches of `size`, longest first. Remembered for the last few
        request lists: every proxy of the many-mixtures loop asks for the same ones, and building the inputs
        (sorting, a tensor per batch, index lists) is Python work that does not depend on the weights."""
        key = (size, tuple((tuple(context), tuple(continuation)) for _, context, continuation in requests))
        if key in self._prepared:
            return self._prepared[key]
        collator = Collator(list(range(len(requests))),
                            sort_fn=lambda i: (-len(requests[i][1] + requests[i][2]), tuple(requests[i][1] + requests[i][2])))
        batches = []
        for chunk in collator.get_batched(n=size):
            inputs, rows, cols, targets, lengths = [], [], [], [], []
            for row, index in enumerate(chunk):
                _, context, continuation = requests[index]
                if not continuation:
                    raise EvalInputError("a loglikelihood request has an empty continuation")
                whole = (context + continuation)[-(self.max_length + 1):]
                inputs.append(whole[:-1])
                first = len(whole) - 1 - len(continuation)
                rows += [row] * len(continuation)
                cols += range(first, first + len(continuation))
                targets += continuation
                lengths.append(len(continuation))
            width = max(map(len, inputs))
            tokens = torch.tensor([ids + [self.eot_token_id] * (width - len(ids)) for ids in inputs], dtype=torch.long)
            batches.append(Batch(list(chunk), tokens, torch.tensor(rows), torch.tensor(cols), torch.tensor(targets), lengths))
        if len(self._prepared) >= 4:
            self._prepared.clear()
        self._prepared[key] = batches
        return batches

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
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, need_greedy=False)
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

