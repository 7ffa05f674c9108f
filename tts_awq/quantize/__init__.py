"""AWQ INT4 for decoder stacks: calibration capture, scale/clip search, packing, the INT4 module, reassembly."""
