"""Choices that make the loop fast, each one switchable."""

from ._cpu import tune_cpu as tune_cpu
