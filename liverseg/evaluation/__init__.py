"""Compare predictions with references (see :mod:`liverseg.evaluation.scoring`)."""
from __future__ import annotations

from .scoring import (EVALUATION_FOLDER, LESION_WORDS, METRICS, CaseResult, EvalCase, LesionResult, evaluate,
                      format_lesion_table, format_table, lesion_label_of, manifest_cases, pair_cases, pool_lesions,
                      summarise, worst_cases, write_csv, write_lesions_csv, write_outputs, write_summary_csv)

__all__ = ["CaseResult", "LesionResult", "EvalCase", "pair_cases", "manifest_cases", "evaluate", "lesion_label_of",
           "summarise", "worst_cases", "pool_lesions", "write_csv", "write_lesions_csv", "write_summary_csv",
           "format_table", "format_lesion_table", "write_outputs", "METRICS", "LESION_WORDS", "EVALUATION_FOLDER"]
