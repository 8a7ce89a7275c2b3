"""Every metric network loaded once, and one style's image set measured into its score parts
(docs/score.md). The stage and `python -m consumer.score` both measure through here."""
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

from common.score.formula import StyleParts
from common.style_files import IMAGE_SUFFIXES


def reference_images(style_dir: Path) -> List[Path]:
    """The style's reference images, as the checker lists them (STYLE/images/*, sorted)."""
    folder = Path(style_dir) / "images"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def missing_images(paths: Sequence[Path]) -> List[Path]:
    """The result images that are not there: a score over fewer images is no score (docs/score.md)."""
    return [p for p in paths if not Path(p).is_file()]


class Scorer:
    """The six metrics' networks and the word list, from `ScoreFiles` (common/score/files.py)."""

    def __init__(self, files):
        from common.score.clip_iqa import ClipIqa
        from common.score.clip_r import ClipR, read_words
        from common.score.dino import Dino
        from common.score.fid import FidInception
        from common.score.lpips import Lpips
        self.dino = Dino.load(files.dino)
        self.clip_r = ClipR.load(files.clip)
        self.words = read_words(files.clip_r_prompts)
        self.inception = FidInception.load(files.fid_inception)
        self.lpips = Lpips.load(files.lpips_backbone, files.lpips_linear)
        self.clip_iqa = ClipIqa.load(files.clip_iqa, files.clip_iqa_tokenizer)
        self._ref_cache = {}

    def _references(self, refs: Sequence[Path]):
        """(DINO embeddings, Inception features) of a style's references, computed once per style."""
        key = tuple(str(p) for p in refs)
        if key not in self._ref_cache:
            self._ref_cache = {key: (self.dino.embed(refs), self.inception.features(refs))}
        return self._ref_cache[key]

    def parts(self, images: Sequence[Path], refs: Sequence[Path], beat: Callable[[str], None] = lambda _: None
              ) -> StyleParts:
        """One style's generated `images` against its `refs`: each metric's mean, the CLIP-R hits and the
        Inception features that pool across styles."""
        from common.score.dino import dino_similarity
        from common.score.hist import hist_score
        images, refs = list(images), list(refs)
        ref_dino, ref_features = self._references(refs)
        beat("score")
        dino = dino_similarity(self.dino.embed(images), ref_dino)
        beat("score")
        hits = np.asarray(self.clip_r.hits(images, self.words), bool)
        beat("score")
        features = self.inception.features(images)
        beat("score")
        lpips = self.lpips.distance(images, refs)
        beat("score")
        iqa = float(np.mean(self.clip_iqa.scores(images)))
        return StyleParts(dino=float(dino), hist=float(hist_score(images, refs)), lpips=float(lpips), clip_iqa=iqa,
                          hits=hits, features=np.asarray(features, np.float64), ref_features=ref_features)
