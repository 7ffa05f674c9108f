"""``tts-awq speak``: one WAV per script line with the fast engine and the runaway guard (:mod:`tts_awq.guard`)."""
