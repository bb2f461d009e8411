"""Training scaffolding, kept out of the library that ComfyUI imports: the distillation CLI (distill.py)
and its loss plot (plot.py), the shipped teacher and its trainer (teacher.py, train_teacher.py), `make demo`
(demo.py) and CPU training settings (cpu.py). The distillation loop is flash_vaed.distill.loop, shared with
the node."""
