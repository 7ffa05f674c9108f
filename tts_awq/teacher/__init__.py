"""``tts-awq teacher``: distillation targets (codes, top-k log-probabilities) as a ``datasets``-readable parquet set.

:mod:`.rows` reads the input table, :mod:`tts_awq.guard` generates with the runaway guard, :mod:`.forced` builds
the talker rows of given codes, :mod:`.targets` turns teacher-forced logits into top-k columns, :mod:`.shards`
writes and verifies parquet shards, :mod:`.card` the README and provenance, :mod:`.run` wires them.
"""
