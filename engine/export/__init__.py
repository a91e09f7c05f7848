"""Export a run's model for other tools: PEFT adapters, a merged Hugging Face checkpoint, or GGUF for llama.cpp.

`python -m engine export RUN --format peft|merged|gguf --out DIR` (engine/commands/export.py) loads the run's base
model with the adapters of one checkpoint and calls one of:

    peft.write_peft(model, cfg, out, ...)           adapter_model.safetensors + adapter_config.json
    merged.write_merged(model, tokenizer, out, ...)  config.json, model.safetensors, tokenizer and generation files
    gguf_writer.write_gguf(model, tokenizer, path, ...)  one .gguf file, F16 or Q8_0
"""
