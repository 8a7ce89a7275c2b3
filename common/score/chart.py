"""OUTPUT/scores.png, what a person looks at first (docs/score.md): one panel per metric and one for the
final score, each metric drawn as the term it adds to the formula so that longer is better everywhere
(1 − lpips, (20 − min(fid, 20)) / 20), a row per style and the overall row, DreamBooth alone (light) against
StyleID (dark), each bar with its value. Below, when the output was scored under more than one set of
settings, the final score of each (common/score/history.py). Pillow only; Jittor-free."""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from common.score.formula import FID_CAP

PANELS = (("dino", "dino_score"), ("hist", "hist_score"), ("1 - lpips", "lpip_score"),
          ("(20 - fid) / 20", "fid_score"), ("clip_iqa", "clip_iqa_score"), ("clip_r", "clip_r_score"),
          ("final score", "final_score"))
KINDS = ("content", "result")  # top bar, bottom bar of a row
LABELS = {"content": "DreamBooth alone (content)", "result": "StyleID on DreamBooth (result)"}
COLOURS = {"content": (160, 185, 230), "result": (20, 60, 160)}
INK, GRID, BAND = (0, 0, 0), (215, 215, 215), (242, 242, 242)
MARGIN, HEADER, SCALE, VALUE, GAP = 12, 58, 120, 40, 16  # px; SCALE: the length of a bar at 1.0
BAR, ROW = 11, 30  # px: a bar's height; a row (its two bars and the space below)
HISTORY_HEAD, HISTORY_LABEL, HISTORY_SCALE = 34, 240, 400  # px: its title; a run's label; a bar at 1.0 (finals differ in the 2nd decimal)


@dataclass(frozen=True)
class Bar:
    row: str  # a style, or "overall"
    panel: str  # the metric's key
    kind: str
    value: Optional[float]  # the term drawn (0..1); None: n/a (a style's own FID needs two images a side)
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive); an n/a bar is not filled


def term(key: str, value) -> Optional[float]:
    """The metric as it enters the final score (higher is better), or None where it is n/a."""
    if value is None or not math.isfinite(value):
        return None
    if key == "lpip_score":
        return max(0.0, 1.0 - value)
    if key == "fid_score":
        return (FID_CAP - min(value, FID_CAP)) / FID_CAP
    return float(value)


def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def _rows(combined: dict) -> List[Tuple[str, dict]]:
    """(label, {kind: that row's scores}) per style, then overall."""
    styles = list(combined["result"]["per_style"])
    return ([(s, {k: combined[k]["per_style"].get(s, {}) for k in KINDS}) for s in styles]
            + [("overall", {k: combined[k] for k in KINDS})])


def _label_width(combined: dict) -> int:
    return int(max(_font().getlength(name[:24]) for name, _ in _rows(combined))) + 10


def _panel_x(combined: dict, p: int) -> int:
    return MARGIN + _label_width(combined) + p * (SCALE + VALUE + GAP)


def _row_y(r: int) -> int:
    return HEADER + r * ROW


def bars(combined: dict) -> List[Bar]:
    """Every bar of the panels with its place in the picture (what `chart` draws)."""
    out = []
    for r, (name, row) in enumerate(_rows(combined)):
        for p, (_, key) in enumerate(PANELS):
            for k, kind in enumerate(KINDS):
                value = term(key, row[kind].get(key))
                x0, y0 = _panel_x(combined, p), _row_y(r) + k * (BAR + 1)
                length = 0 if value is None else max(1, round(SCALE * min(value, 1.0)))
                out.append(Bar(name, key, kind, value, (x0, y0, x0 + max(length, 1) - 1, y0 + BAR - 1)))
    return out


def chart(combined: dict, history: Sequence[dict] = (), current: str = ""):
    """The picture: `combined` as report.combine_records gives it; `history` as history.read_history gives it
    (drawn when it holds two or more entries), `current` the plan of this run (marked there)."""
    from PIL import Image, ImageDraw
    font, rows = _font(), _rows(combined)
    panels_bottom = _row_y(len(rows)) + 6
    runs = list(history) if len(history) >= 2 else []
    width = max(_panel_x(combined, len(PANELS)) + MARGIN, 2 * MARGIN + HISTORY_LABEL + HISTORY_SCALE + 60)
    height = panels_bottom + (HISTORY_HEAD + len(runs) * ROW if runs else 0) + MARGIN
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 6), "score per style: each metric as its term in the final score (longer is better)",
              fill=INK, font=font)
    x = MARGIN
    for kind in KINDS:
        draw.rectangle((x, 24, x + 10, 32), fill=COLOURS[kind])
        draw.text((x + 14, 22), LABELS[kind], fill=INK, font=font)
        x += 24 + int(font.getlength(LABELS[kind]))
    overall = _row_y(len(rows) - 1) - 3
    draw.rectangle((MARGIN, overall, width - MARGIN, _row_y(len(rows)) - 4), fill=BAND)
    for r, (name, _) in enumerate(rows):
        draw.text((MARGIN, _row_y(r) + 5), name[:24], fill=INK, font=font)
    for p, (title, _) in enumerate(PANELS):
        x0 = _panel_x(combined, p)
        draw.text((x0, HEADER - 16), title, fill=INK, font=font)
        for tick in (0.0, 0.5, 1.0):
            gx = x0 + round(SCALE * tick) - (1 if tick else 0)
            draw.line((gx, HEADER - 3, gx, panels_bottom - 8), fill=GRID)
    for bar in bars(combined):
        if bar.value is None:
            draw.text((bar.box[0], bar.box[1] - 1), "n/a", fill=INK, font=font)
            continue
        draw.rectangle(bar.box, fill=COLOURS[bar.kind])
        draw.text((bar.box[2] + 3, bar.box[1] - 1), f"{bar.value:.3f}", fill=INK, font=font)
    if runs:
        _draw_history(draw, font, runs, current, panels_bottom)
    return image


def history_bars(runs: Sequence[dict], top: int) -> List[Bar]:
    """The history's bars: a row per scored plan, its final score for content and result."""
    out = []
    for r, run in enumerate(runs):
        for k, kind in enumerate(KINDS):
            value = term("final_score", run.get(kind))
            if value is None:
                continue
            x0, y0 = MARGIN + HISTORY_LABEL, top + HISTORY_HEAD - 6 + r * ROW + k * (BAR + 1)
            out.append(Bar(run["plan"], "final_score", kind, value,
                           (x0, y0, x0 + max(1, round(HISTORY_SCALE * min(value, 1.0))) - 1, y0 + BAR - 1)))
    return out


def _draw_history(draw, font, runs, current: str, top: int):
    draw.line((MARGIN, top, draw.im.size[0] - MARGIN, top), fill=GRID)
    draw.text((MARGIN, top + 8), f"final score of each of the {len(runs)} settings this output was scored under "
              "(in the order last scored)", fill=INK, font=font)
    for r, run in enumerate(runs):
        mark = " (this run)" if run["plan"] == current else ""
        draw.text((MARGIN, top + HISTORY_HEAD - 6 + r * ROW + 5), f"{run['plan'][:8]} {run['time'][:16].replace('T', ' ')}{mark}",
                  fill=INK, font=font)
    for bar in history_bars(runs, top):
        draw.rectangle(bar.box, fill=COLOURS[bar.kind])
        draw.text((bar.box[2] + 3, bar.box[1] - 1), f"{bar.value:.4f}", fill=INK, font=font)


def draw_scores(combined: dict, path: Path, history: Sequence[dict] = (), current: str = "", *,
                fsync: bool) -> Path:
    """Write OUTPUT/scores.png (atomically, replacing the last run's)."""
    from common.atomic import write_png
    return write_png(path, chart(combined, history, current), fsync=fsync, replace=True)
