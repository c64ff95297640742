"""megatron-demix: DeMix data-mixture search on Megatron (see README.md)."""
from megatron_demix.runtime.fusers import disable_megatron_jit_fuser
from megatron_demix.checkpoint.releases import read_newer_checkpoints
from megatron_demix.runtime.quiet import install_warning_filters

install_warning_filters()
disable_megatron_jit_fuser()
read_newer_checkpoints()
