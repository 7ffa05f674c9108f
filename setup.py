"""Packaging beyond pyproject.toml: ship the top-level ``calib_data/`` as ``tts_awq/calib_data`` package data."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tts_awq*"]), "tts_awq.calib_data", "tts_awq.calib_data.voices"],
    package_dir={"tts_awq.calib_data": "calib_data", "tts_awq.calib_data.voices": "calib_data/voices"},
    package_data={"tts_awq.calib_data": ["*.jsonl", "*.md"], "tts_awq.calib_data.voices": ["*.wav", "*.json"]},
    include_package_data=False,
)
