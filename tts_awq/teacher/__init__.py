"""``tts-awq teacher``: distillation targets (codes, top-k log-probabilities) as a ``datasets``-readable parquet set.

:mod:`.rows` reads the input table (also speak's scripts), :mod:`.status` decides whether a model may teach,
:mod:`tts_awq.guard` generates with the runaway guard, :mod:`.forced` builds the talker rows of given codes,
:mod:`.targets` turns teacher-forced logits into top-k arrays, :mod:`.columns` into parquet columns, :mod:`.shards`
writes and verifies the shards (checksummed sidecars), :mod:`.card` the README and provenance, :mod:`.run` wires
them and :mod:`.cli` parses the command line.
"""
