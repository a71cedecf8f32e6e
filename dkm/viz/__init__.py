"""Figures: what they show as plain numbers (`figdata`), plotly figure builders (`plots`), the
notebooks' sliders (`sliders`), browsing the run cache's re-trainings (`browse`), figure and table
files (`files`), text tables (`tables`).

May import: the core and every wing but dkm.app. Imported by: dkm.app and the notebooks.
"""
