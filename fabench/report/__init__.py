"""Reports from results: tables (with published numbers beside) and learning-curve figures.

- runs.csv is read through :func:`fabench.train.runs_csv.read_runs` (schema-checked, bad rows reported);
- :mod:`fabench.report.table`: blocks of mean ± std over seeds, rendered rich/markdown/csv/latex;
- :mod:`fabench.report.published`: the shipped published numbers and their sources;
- :mod:`fabench.report.plot`: accuracy and loss against epoch, one panel per dataset/arch.
"""
