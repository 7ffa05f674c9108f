"""Facts shared by several stages, in one place."""

#: The default seed of every seeded step (calibration generations, DARE masks, validation generations).
DEFAULT_SEED = 1729
