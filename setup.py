"""megatron-demix: DeMix data-mixture search on Megatron (arXiv 2602.00747).

    pip install -e .            # CPU hosts: everything the demo and the tests need
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
    python_requires=">=3.11",
    install_requires=[
        # A CPU build of torch 2.13.0 lies on the CI machines; unpinned torch pulls a CUDA build.
        "torch==2.13.0",
        # The newest megatron-core for Python 3.11 (0.17+ need 3.12).
        "megatron-core==0.16.1",
        "mpi4py==4.1.2",
        "mpich==5.0.2",
        "lightgbm==4.7.0",
        "lm-eval==0.4.13",
        "tokenizers==0.23.3",
        # Hugging Face export / import (megatron_demix/hf/): config classes, tokenizer files, and the logit proofs.
        "transformers==5.23.0",
        "safetensors==0.8.0",
        "pyyaml==6.0.3",
        "tqdm==4.70.1",
        "matplotlib==3.11.2",
        "psutil==7.2.2",
        "numpy",
        "scipy",
        # Ridge, the search's small-sample predictor (search/predictor.py).
        "scikit-learn==1.9.1",
        # Corpora as they ship (data/readers.py): Parquet and save_to_disk Arrow files (string_view: 16), .zst JSON lines.
        "pyarrow>=16,<27",
        "zstandard>=0.25.0,<0.26",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda120==2.4.0"],
        "tensorboard": ["tensorboard==2.21.0"],
        "gpu": ["transformer-engine[pytorch]"],
        "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "pytest-xdist==3.8.0"],
    },
    entry_points={"console_scripts": [
        "demix=megatron_demix.cli:main",
        # lm-eval's own command line with the megatron-demix model registered (lm_eval imports no plugins).
        "demix-lm-eval=megatron_demix.eval.__main__:main",
    ]},
)
