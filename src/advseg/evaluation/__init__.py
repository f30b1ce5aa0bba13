"""Evaluation of predicted label maps against ground truth (``advseg evaluate``)."""

from advseg.evaluation.evaluate import evaluate_folders, format_summary, read_class_names

__all__ = ["evaluate_folders", "format_summary", "read_class_names"]
