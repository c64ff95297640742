"""Known library warnings that say nothing to a user of this tool, filtered once, here.

Each filter names the warning and why it is expected; anything else still shows. Installed when
`megatron_demix` is imported (its `__init__`), so every entry point (demix, launch/, tools/, job
scripts) starts quiet in the same way. Fixed at the cause instead, elsewhere: megatron-core's
TransformerConfig warns that its own default `cuda_graph_scope="full"` is deprecated; model/gpt.py
passes the new spelling.
"""
from __future__ import annotations

import logging
import warnings

KNOWN_WARNINGS = (
    # megatron-core on hosts without Transformer Engine / Apex (every CPU host; GPU hosts outside the
    # NGC container): it falls back to torch norms, optimizers and multi-tensor helpers, which is the
    # CPU path this project chooses deliberately (runtime/device.py, training/optimizer.py).
    (UserWarning, r"(Transformer Engine and Apex are|Apex is|Transformer Engine is) not installed"),
    # megatron-core 0.16's torch_dist loader calls torch.distributed.checkpoint's deprecated
    # `load_state_dict` and builds torch ShardedTensors; torch 2.13 warns on every load. Both are
    # inside megatron-core, not in this project's code, and the loads are correct.
    (FutureWarning, r"`load_state_dict` is deprecated"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
)


KNOWN_LOG_LINES = {
    # megatron-core 0.19 logs at every GPTModel built that GPTModel is deprecated for HybridModel; why
    # this project stays on GPTModel for now is in model/gpt.py (build_gpt_model).
    "megatron.core.models.gpt.gpt_model": "GPTModel IS DEPRECATED",
}


class _DropLine(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install_warning_filters() -> None:
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger, text in KNOWN_LOG_LINES.items():
        if not any(isinstance(f, _DropLine) for f in logging.getLogger(logger).filters):
            logging.getLogger(logger).addFilter(_DropLine(text))
