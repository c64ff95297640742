"""megatron-demix: DeMix data-mixture search on Megatron (see README.md)."""
from megatron_demix.runtime.fusers import disable_megatron_jit_fuser
from megatron_demix.runtime.quiet import install_warning_filters

install_warning_filters()
disable_megatron_jit_fuser()
