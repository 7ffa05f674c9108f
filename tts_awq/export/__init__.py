"""Exports of a validated package for other runtimes (MLX / mlx-audio, GGUF / llama.cpp, compressed-tensors /
vLLM): one module per format, registered in :mod:`tts_awq.export.registry`, run by :mod:`tts_awq.export.stage`."""
