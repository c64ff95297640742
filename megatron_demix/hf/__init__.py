"""Hugging Face checkpoints both ways: export a Megatron checkpoint (or a mixture's proxy) to a
Hugging Face model directory, import a Hugging Face Llama/Qwen2/Qwen3 model as a torch_dist checkpoint.

    demix export --checkpoint runs/x/checkpoints/base --output hf/base     # export.py
    demix export --experiment x.yaml --mixture m.json --output hf/proxy    # merged while streaming
    demix import-hf --model hf/Qwen3-0.6B --save ckpt/qwen3                # import_hf.py
    model: {from_hf: hf/Qwen3-0.6B}          # experiment YAML: start from it   # from_hf.py
    eval: {command: "... {hf_checkpoint} ..."}    # each proxy exported for a harness (search/evaluate.py)

`config_map.py` says once how the two architectures correspond (config fields and tensor names);
both directions read it.
"""
