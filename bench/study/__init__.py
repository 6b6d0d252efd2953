"""Study files -> a validated list of RunConfigs, before any work starts.

``load`` reads YAML and resolves ``extends``; ``build`` validates and expands the grid (value
rules in ``checks``, cross-section rules in ``bench.rules``); ``report_specs``, ``search_spec``
and ``baselines`` are the schemas of the ``tables:`` / ``plots:``, ``search:`` and baseline files.

>>> from bench.study import load_study
>>> study = load_study("ablations/quickstart.yaml", {"eval.num_samples": 200})
"""

from bench.study.build import Study, build_study, load_study
from bench.study.checks import StudyError
from bench.study.load import TOP_KEYS, merge_studies, read_study_file

__all__ = ["Study", "StudyError", "load_study", "build_study", "read_study_file", "merge_studies", "TOP_KEYS"]
