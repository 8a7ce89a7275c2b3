"""The whole score, end to end: our scorer (common/score/scorer.py, formula.py) on the demo's random-weight
networks and two small styles equals the checker's libraries on the same files and images
(tests/golden/make_score_final.py), metric by metric and in the final score.

Tolerance: 1e-3 relative for every metric and the final score, the parity target each network's own test
holds to (docs/score.md: their features agree within a few 1e-6 of their scale, so the metrics agree to
about 1e-5 and below); CLIP-R's hits exactly (the golden's closest call, the 5th against the 6th word, is
several percent apart, far beyond that rounding)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.devkit.demo import write_score_files
from common.score.files import ScoreFiles
from common.score.formula import combine
from score_final_data import write_styles

GOLDEN = np.load(Path(__file__).parent / "golden" / "score_final.npz")
RTOL = 1e-3


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from common.score.scorer import Scorer
    work = tmp_path_factory.mktemp("final")
    files = write_score_files(work / "score")
    scorer = Scorer(ScoreFiles(**{k: Path(v) for k, v in files.items() if k != "enabled"}))
    styles = write_styles(work)
    return styles, combine({style: scorer.parts(gens, refs) for style, (gens, refs) in styles.items()})


def test_the_images_are_the_goldens(scored):
    styles, _ = scored
    ours = [hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()
            for gens, refs in styles.values() for p in (*gens, *refs)]
    assert ours == GOLDEN["image_sha256"].tolist() and list(styles) == GOLDEN["styles"].tolist()


@pytest.mark.parametrize("metric", ["dino", "hist", "lpips", "clip_iqa", "clip_r", "fid", "final"])
def test_each_style_and_the_overall_score_equal_the_checkers(scored, metric):
    _, score = scored
    rows = {"overall": score, **{f"style_{s}": row for s, row in score["per_style"].items()}}
    key = "lpip_score" if metric == "lpips" else f"{metric}_score"
    for name, row in rows.items():
        np.testing.assert_allclose(row[key], GOLDEN[f"{name}_{metric}"], rtol=RTOL, err_msg=name)


def test_clip_r_hits_are_the_checkers_over_all_images(scored):
    _, score = scored
    assert score["images"] == len(GOLDEN["hits"])
    assert score["clip_r_score"] == GOLDEN["hits"].mean() and 0 < GOLDEN["hits"].mean() < 1
