"""The comparison study (`sbnn compare`): every layer kind trained on one data set under the same budget, over
several seeds, then aggregated into ``docs/results.md``, its figures and the served model of each kind.

An experiment built on the evaluation library (:mod:`app.evaluate`), which imports nothing from here:
:mod:`~app.study.design` (what is trained), :mod:`~app.study.runs` (training, resumably),
:mod:`~app.study.aggregate` and :mod:`~app.study.measure` (the numbers), :mod:`~app.study.claims` (the paper's
claims), :mod:`~app.study.report`, :mod:`~app.study.gate_section` and :mod:`~app.study.plots` (the report),
:mod:`~app.study.publish` (writing it all) and :mod:`~app.study.command` (the CLI command).
"""
