"""Publish a validated tts-awq package to the Hugging Face Hub (``tts-awq push``).

Example::

    from pathlib import Path
    from tts_awq.publish import PushOptions, push

    plan = push(PushOptions(package=Path("darwin-3-awq"), repo_id="you/darwin-3-awq", dry_run=True)).plan
    print(plan.card_text)  # the model card; nothing was sent
    result = push(PushOptions(package=Path("darwin-3-awq"), repo_id="you/darwin-3-awq"))
    print(result.commit_url)
"""

from __future__ import annotations

from tts_awq.publish.card import CardResult, build_card
from tts_awq.publish.package import Package, load_package
from tts_awq.publish.upload import PushOptions, PushPlan, PushResult, plan_push, push

__all__ = ["CardResult", "Package", "PushOptions", "PushPlan", "PushResult", "build_card", "load_package",
           "plan_push", "push"]
