"""Distillation of Flash-VAED students from their teachers: data, losses, schedules and the loop.

`loop.run(DistillConfig(...), on_progress)` is the one entry point, used by training/distill.py and the
Prune & Distill node. See training/README.md for the design.
"""
