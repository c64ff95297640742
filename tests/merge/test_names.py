"""The merge's method, dtype and schedule names: the config's choices (flags, docs, validation) are the registries'.

MergeConfig keeps them as `Literal`s so that loading an experiment needs no torch; this test keeps
the two lists from drifting apart."""
from typing import get_args, get_type_hints

from megatron_demix.merge.config import MergeConfig
from megatron_demix.merge.methods import METHODS
from megatron_demix.merge.plan import DTYPES
from megatron_demix.merge.run_average import SCHEDULES


def test_config_choices_are_the_registered_methods_and_dtypes():
    hints = get_type_hints(MergeConfig)
    assert set(get_args(hints["method"])) == set(METHODS)
    assert set(get_args(hints["dtype"])) == {"same", *DTYPES}
    assert list(get_args(hints["schedule"])) == list(SCHEDULES)
