"""The score's aggregation (common/score/formula.py): the checker's formula and pooling, on numbers worked
out by hand here."""
import json
import math

import numpy as np
import pytest

from common.score.formula import KEYS, StyleParts, combine, final_score


def mean_gap(real, fake):
    """A stand-in for the Frechet distance (test double): the gap of the means, so pooling shows."""
    return abs(float(np.mean(fake)) - float(np.mean(real)))


def parts(dino, hist, lpips, iqa, hits, gen_value, n_ref, ref_value):
    return StyleParts(dino=dino, hist=hist, lpips=lpips, clip_iqa=iqa, hits=np.array(hits, bool),
                      features=np.full((len(hits), 4), gen_value), ref_features=np.full((n_ref, 4), ref_value))


STYLES = {"a": parts(0.5, 0.6, 0.3, 0.7, [True, True, False], gen_value=1.0, n_ref=2, ref_value=0.0),
          "b": parts(0.3, 0.2, 1.2, 0.5, [True, False], gen_value=4.0, n_ref=2, ref_value=2.0)}


def test_final_score_is_the_checkers_formula():
    # (0.2*0.5 + 0.4*0.6 + 0.4*0.7) * (0.5*0.8 + 0.4*(20-5)/20 + 0.1*0.9) = 0.62 * 0.79
    assert final_score(0.5, 0.6, 0.3, 0.8, 5.0, 0.9) == pytest.approx(0.62 * 0.79)


def test_final_score_clamps_lpips_and_caps_fid():
    # 1 - lpips < 0 counts as 0; a FID above 20 earns nothing: (0.2*1 + 0.4*1) * (0.5*1 + 0 + 0.1*1)
    assert final_score(1.0, 1.0, 1.7, 1.0, 35.0, 1.0) == pytest.approx(0.6 * 0.6)
    assert math.isnan(final_score(1.0, 1.0, 0.0, 1.0, math.nan, 1.0))


def test_overall_means_styles_but_pools_hits_and_features():
    s = combine(STYLES, mean_gap)
    assert s["dino_score"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
    assert s["hist_score"] == pytest.approx(0.4)
    assert s["lpip_score"] == pytest.approx(0.75)
    assert s["clip_iqa_score"] == pytest.approx(0.6)
    assert s["clip_r_score"] == pytest.approx(3 / 5)  # 3 hits of 5 images, not (2/3 + 1/2) / 2
    # generated pooled: (3*1 + 2*4) / 5 = 2.2; references pooled: (0+0+2+2) / 4 = 1.0
    assert s["fid_score"] == pytest.approx(1.2)
    assert s["final_score"] == pytest.approx((0.2 * 0.4 + 0.4 * 0.4 + 0.4 * 0.25) * (0.5 * 0.6 + 0.4 * 18.8 / 20
                                                                                    + 0.1 * 0.6))
    assert s["images"] == 5 and list(s["per_style"]) == ["a", "b"]


def test_per_style_rows_use_the_styles_own_images():
    a, b = combine(STYLES, mean_gap)["per_style"].values()
    assert a["clip_r_score"] == pytest.approx(2 / 3) and a["fid_score"] == pytest.approx(1.0)
    assert b["fid_score"] == pytest.approx(2.0) and b["lpip_score"] == pytest.approx(1.2)
    assert a["final_score"] == pytest.approx((0.1 + 0.24 + 0.28) * (0.5 * 2 / 3 + 0.4 * 19 / 20 + 0.07))
    assert b["final_score"] == pytest.approx((0.06 + 0.08 + 0.0) * (0.25 + 0.4 * 18 / 20 + 0.05))
    assert set(a) == set(KEYS)


def test_fid_of_a_single_image_is_not_a_number():
    one = {"a": parts(0.5, 0.5, 0.5, 0.5, [True], 1.0, 2, 0.0)}
    s = combine(one, mean_gap)
    assert math.isnan(s["fid_score"]) and math.isnan(s["final_score"])


def test_parts_round_trip_through_json_and_refuse_garbage():
    p = STYLES["a"]
    back = StyleParts.from_json(json.loads(json.dumps(p.to_json())))
    assert back.dino == p.dino and np.array_equal(back.hits, p.hits)
    assert np.array_equal(back.features, p.features) and back.ref_features.shape == (2, 4)
    with pytest.raises(ValueError, match="not a style's score parts"):
        StyleParts.from_json({"dino": 1})
    with pytest.raises(ValueError, match="mismatched"):
        StyleParts.from_json(dict(p.to_json(), hits=[True]))
