"""Tasks: job kinds as plug-ins on the one Trainer (see ``tasks/base.py`` for the contract).

Importing this package registers the built-in tasks under the registry kind ``task``.
"""

from modaloom.tasks import (  # noqa: F401  (register the built-in tasks)
    classification,
    clip,
    image_classification,
    multiple_choice,
    pretrain,
    qa,
    sentence_embedding,
    speech_to_text,
    tagging,
    text2text,
)
from modaloom.tasks.base import JobPaths, Task, load_job_config

__all__ = ["JobPaths", "Task", "load_job_config"]
