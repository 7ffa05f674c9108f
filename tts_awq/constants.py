"""Facts shared by several stages, in one place."""

#: The default seed of every seeded step (calibration generations, DARE masks, validation generations).
DEFAULT_SEED = 1729

#: Talker decode engines of generation (tts_awq.qwen_tts.decode): "fast" = tts-awq's batched loop with per-item
#: draws (codes independent of the batch), "exact" = the same loop drawing like qwen-tts (codes identical to
#: "qwen-tts" for the same seed and batch; tests/test_decode.py), "qwen-tts" = qwen-tts's nested ``generate``.
ENGINES = ("fast", "exact", "qwen-tts")
