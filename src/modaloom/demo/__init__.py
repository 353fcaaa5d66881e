"""``modaloom demo``: the whole path on real data for every modality, with a report (see ``demo/stage.py``).

Each stage is a module here with ``run(ctx: StageContext) -> StageReport``; ``STAGES`` lists them in the
order ``modaloom demo`` runs them.
"""

from __future__ import annotations

STAGES: dict[str, str] = {
    "text": "modaloom.demo.text",
    "vision": "modaloom.demo.vision",
    "vision-language": "modaloom.demo.vision_language",
    "speech": "modaloom.demo.speech",
}
