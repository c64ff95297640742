"""README.md's experiment reference is what the config dataclasses generate (it cannot drift)."""
from megatron_demix.commands.reference import README, readme_block, reference


def test_readme_reference_is_up_to_date():
    block = readme_block(README.read_text())
    assert block is not None, "README.md lacks the experiment-reference markers"
    assert block == reference(), "README.md's experiment reference is stale: run python -m megatron_demix.commands.reference --write"


def test_every_section_and_field_is_documented():
    text = reference()
    for section in ("datasets:", "training:", "eval:", "search:", "cluster:", "cluster.stages"):
        assert section in text
    assert "| `keep_checkpoints` |" in text and "| `command` |" in text
