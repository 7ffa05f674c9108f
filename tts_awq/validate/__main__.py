"""``python -m tts_awq.validate OUT --reference SRC ...``: the validate-awq CLI as a module, so that
``accelerate launch --multi_gpu --num_processes N -m tts_awq.validate ...`` (or ``torchrun --nproc_per_node N -m
tts_awq.validate ...``) starts one worker per GPU, or per CPU process on a machine without GPUs."""

import sys

from tts_awq.cli import validate_awq_main

sys.exit(validate_awq_main())
