"""Tasks: job kinds as plug-ins on the one Trainer (see ``tasks/base.py`` for the contract).

Importing this package registers the built-in tasks under the registry kind ``task``.
"""

import modaloom.tasks.clip  # noqa: F401  (register "clip_retrieval", "zero_shot")
import modaloom.tasks.image_classification  # noqa: F401  (register "image_classification")
from modaloom.tasks import classification, pretrain  # noqa: F401  (register "classification", "pretrain")
from modaloom.tasks.base import JobPaths, Task, load_job_config

__all__ = ["JobPaths", "Task", "load_job_config"]
