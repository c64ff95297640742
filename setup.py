"""megatron-demix: DeMix data-mixture search on Megatron (arXiv 2602.00747).

    pip install -c constraints.txt -e .   # the tested versions (what `make setup` installs)
    pip install -e .            # inside a cluster container: keeps its torch, megatron-core, TE
    pip install -e .[dali]      # + the optional NVIDIA DALI data loader
    pip install -e .[tensorboard]   # + TensorBoard event files next to the trainer's JSON-lines log
    pip install -e .[gpu]       # GPU clusters: + Transformer Engine (Apex comes from the NGC container)
"""
from setuptools import find_packages, setup

setup(
    name="megatron-demix",
    version="0.1.0",
    description="Choose a pretraining data mixture by merging component models (DeMix) on Megatron",
    packages=find_packages(include=["megatron_demix", "megatron_demix.*"]),
    # The job scripts the executors submit (a checkout's slurm/ links to them): an installed package runs them.
    package_data={"megatron_demix.cluster": ["slurm/*.sh"]},
    python_requires=">=3.11",
    # Ranges the code is tested against; the exact versions CI and `make setup` install are in
    # constraints.txt. Ranges, not pins, so that `pip install -e .` inside a cluster container keeps
    # the container's own torch, megatron-core and Transformer Engine (README, "Installing").
    install_requires=[
        # Floor: megatron-core's own (>= 2.6). CI tests 2.13.0; a container's torch is a CUDA build
        # with a pre-release number (2.x.0a0+...), which pip accepts for an installed torch.
        "torch>=2.6",
        # Both ends tested: 0.16.1 (make test-compat) and 0.19.2 (make test); 0.20 is unreleased.
        "megatron-core>=0.16.1,<0.20",
        "mpi4py>=4.1.2,<5",
        "mpich>=5.0.2,<6",
        "lightgbm>=4.7.0,<5",
        "lm-eval>=0.4.13,<0.5",
        "tokenizers>=0.23.3,<0.24",
        # Hugging Face export / import (megatron_demix/hf/): config classes, tokenizer files, and the logit proofs.
        "transformers>=5.23.0,<6",
        "safetensors>=0.8.0,<0.9",
        "pyyaml>=6.0.3,<7",
        "tqdm>=4.70.1,<5",
        "matplotlib>=3.11.2,<4",
        # dist_checkpointing.save raises without it.
        "psutil>=7.2.2,<8",
        "numpy",
        "scipy",
        # Ridge, the search's small-sample predictor (search/predictor.py).
        "scikit-learn>=1.9.1,<2",
        # Corpora as they ship (data/readers.py): Parquet and save_to_disk Arrow files (string_view: 16), .zst JSON lines.
        "pyarrow>=16,<27",
        "zstandard>=0.25.0,<0.26",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda120>=2.4.0,<3"],
        "tensorboard": ["tensorboard>=2.21.0,<3"],
        "gpu": ["transformer-engine[pytorch]"],
        "test": ["pytest>=9.2.0,<10", "pytest-timeout>=2.4.0,<3", "pytest-xdist>=3.8.0,<4"],
    },
    entry_points={"console_scripts": [
        "demix=megatron_demix.cli:main",
        # lm-eval's own command line with the megatron-demix model registered (lm_eval imports no plugins).
        "demix-lm-eval=megatron_demix.commands.lm_eval:main",
    ]},
)
