"""Front ends: the command line (`cli`, `python -m dkm`), the papermill runner of the notebooks
(`runner`), the offline HTML book (`book`).

May import: everything. Imported by: dkm.__main__ only.
"""
