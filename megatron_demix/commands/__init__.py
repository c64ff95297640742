"""Entry modules (`python -m megatron_demix.commands.<name>`), above the stages: each parses its flags, reads the
experiment and calls the stages. `launch/`, `tools/` and the job scripts are thin front doors to them."""
