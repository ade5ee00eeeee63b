"""Distillation: teachers (a local model or an OpenAI-compatible URL, `teacher`) label inputs
into a resumable cache that trains a student (`pipeline`); `report` scores base, students and
teacher side by side; `demo` is `gentune demo --distill`.

Imports: the core, `data`, `models`, `inference` and `training`."""
