"""lm-eval's own command line with the `megatron-demix` model registered: every lm-eval flag works.

    python -m megatron_demix.eval --model megatron-demix \
        --model_args pretrained=runs/demo/checkpoints/base,batch_size=8 \
        --tasks demix_code_choice,demix_code_bpb --include_path runs/demo/eval/tasks
    python -m megatron_demix.eval --model megatron-demix \
        --model_args experiment=configs/demo.yaml,mixture=mix.json --tasks arc_easy
    python -m megatron_demix.eval ls tasks           # lm-eval's subcommands too

`lm_eval --model megatron-demix ...` from the plain `lm_eval` command cannot work: lm-eval only
knows models imported into its process, and it imports no plugins. This module is that command
with the import done. Offline tasks: set HF_DATASETS_OFFLINE=1.
"""
import sys


def main(argv=None) -> None:
    """Exit status as every demix command's (runtime/errors.py): a bad model_arg or checkpoint is one line, exit 2."""
    from lm_eval.__main__ import cli_evaluate

    from megatron_demix.eval.harness import register
    from megatron_demix.runtime.errors import exit_process, run_command

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    exit_process(run_command("demix-lm-eval", cli_evaluate))


if __name__ == "__main__":
    main()
