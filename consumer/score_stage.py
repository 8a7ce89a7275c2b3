"""Stage score: one job per style, after all its StyleID results. It measures the style's results and its
content images (DreamBooth alone) against the style's references and writes both into the style's score
record; the launcher combines the records into OUTPUT/scores.json (docs/score.md)."""
from pathlib import Path
from typing import List

from common.config import RunConfig
from common.dataset import read_style
from common.jittor_env import DeviceUnavailable, use_device
from common.score.files import find_score_files
from common.score.record import write_record
from common.score.scorer import Scorer, missing_images, reference_images
from common.stage import Beat, DeviceError, Task


def scored_images(style_dir: Path, output_style: Path) -> dict:
    """{kind: the style's images of that kind}, one per prompt, in prompt order."""
    names = [p.name for p in read_style(style_dir).prompts]
    return {"result": [output_style / f"{n}.png" for n in names],
            "content": [output_style / "content" / f"{n}.png" for n in names]}


class ScoreStage:
    """Loads every metric network once; scores a style per task."""
    kind = "score"

    def __init__(self, config: RunConfig, device: str):
        try:
            use_device(device)
        except DeviceUnavailable as e:
            raise DeviceError(str(e)) from e
        files, missing = find_score_files(config.eval)
        if files is None:
            raise FileNotFoundError(missing[0])
        self.scorer = Scorer(files)
        self._fsync = config.queue.fsync

    def run(self, tasks: List[Task], beat: Beat) -> None:
        for task in tasks:
            record = task.files["score"]
            images = scored_images(task.style_dir, record.parent)
            gone = missing_images(images["result"] + images["content"])
            if gone:
                raise FileNotFoundError(f"{gone[0]}: missing, so style {task.style} cannot be scored whole "
                                        f"({len(gone)} image(s) missing)")
            refs = reference_images(task.style_dir)
            parts = {kind: self.scorer.parts(paths, refs, beat) for kind, paths in images.items()}
            write_record(record, parts, images["result"] + images["content"], fsync=self._fsync)
