"""The run's score for people: the styles' records combined as the checker combines them
(OUTPUT/scores.json), a table, the chart (OUTPUT/scores.png, common/score/chart.py, with the final score
of each earlier set of settings, common/score/history.py) and one static page (OUTPUT/report.html) with
every image as a relative link (docs/score.md). Jittor-free: the launcher runs it."""
import html
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import quote

from common.jobqueue.atomic import write_bytes
from common.score.chart import draw_scores
from common.score.formula import combine
from common.score.history import add_to_history
from common.score.record import KINDS, read_record

COLUMNS = (("dino", "dino_score"), ("hist", "hist_score"), ("fid", "fid_score"), ("lpips", "lpip_score"),
           ("clip_iqa", "clip_iqa_score"), ("clip_r", "clip_r_score"), ("final", "final_score"))
LABELS = {"result": "StyleID on DreamBooth", "content": "DreamBooth alone"}


def combine_records(output: Path, styles: List[str]) -> Optional[dict]:
    """{kind: the checker's keys + per_style} over the styles that have a record, or None if none has."""
    records = {s: read_record(output / s / "score.json") for s in styles if (output / s / "score.json").is_file()}
    if not records:
        return None
    return {kind: combine({s: r[kind] for s, r in records.items() if kind in r}) for kind in KINDS}


def _cell(value: float) -> str:
    return "   n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.4f}"


def format_table(scores: dict, title: str) -> List[str]:
    """A row per style, then the overall row (the checker's aggregation)."""
    width = max([7] + [len(s) for s in scores["per_style"]])
    lines = [title, f"{'style':{width}} " + " ".join(f"{name:>8}" for name, _ in COLUMNS)]
    rows = list(scores["per_style"].items()) + [("overall", scores)]
    for style, row in rows:
        lines.append(f"{style:{width}} " + " ".join(f"{_cell(row[key]):>8}" for _, key in COLUMNS))
    return lines


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def scores_json(combined: dict) -> dict:
    """The results' scores under the checker's keys (+ per_style), and the content images' beside them."""
    return _json_safe(dict(combined["result"], content=combined["content"]))


def _link(path: Path, root: Path) -> str:
    """`path` relative to the page's folder, URL-quoted: the page opens from disk, moved with its folders."""
    return html.escape(quote(Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()), quote=True)


def write_report(combined: dict, output: Path, images: Dict[str, dict], *, fsync: bool) -> Path:
    """OUTPUT/report.html: the score tables, then per style its references, content, results and loss curve.
    `images`: {style: {"references": [...], "content": [...], "results": [...], "loss_curve": path or None}}."""
    out = ["<!doctype html><meta charset='utf-8'><title>jstyleid scores</title>",
           "<style>body{font-family:sans-serif} img{height:128px;margin:2px} td,th{padding:2px 8px;"
           "text-align:right} pre{font-size:13px}</style>", "<h1>Scores</h1>",
           "<p><img src='scores.png' style='height:auto'></p>"]
    for kind in ("result", "content"):
        out.append(f"<h2>{html.escape(LABELS[kind])}</h2><table><tr><th>style</th>"
                   + "".join(f"<th>{n}</th>" for n, _ in COLUMNS) + "</tr>")
        rows = list(combined[kind]["per_style"].items()) + [("overall", combined[kind])]
        for style, row in rows:
            out.append(f"<tr><td>{html.escape(style)}</td>"
                       + "".join(f"<td>{_cell(row.get(k)).strip()}</td>" for _, k in COLUMNS) + "</tr>")
        out.append("</table>")
    for style, files in images.items():
        out.append(f"<h2>style {html.escape(style)}</h2>")
        for label in ("references", "content", "results"):
            out.append(f"<p><b>{label}</b><br>" + "".join(
                f"<a href='{_link(p, output)}'><img src='{_link(p, output)}' title='{html.escape(Path(p).name)}'></a>"
                for p in files[label]) + "</p>")
        if files.get("loss_curve"):
            out.append(f"<p><b>loss curve</b><br><img src='{_link(files['loss_curve'], output)}' "
                       "style='height:auto'></p>")
    path = output / "report.html"
    write_bytes(path, "\n".join(out).encode("utf-8"), fsync=fsync)
    return path


def style_images(dataset: Path, output: Path, lora_dir: Path, lora_subdir: str, style) -> dict:
    """What the page shows of one style (a common.dataset.Style)."""
    from common.score.scorer import reference_images
    curve = lora_dir / lora_subdir.format(style=style.name) / "loss_curve.png"
    return {"references": reference_images(style.dir),
            "content": [output / style.name / "content" / f"{p.name}.png" for p in style.prompts],
            "results": [output / style.name / f"{p.name}.png" for p in style.prompts],
            "loss_curve": curve if curve.is_file() else None}


def publish(config, styles) -> List[str]:
    """After a run: combine the styles' records into OUTPUT/scores.json, scores.png and report.html; the
    lines to print (the tables and the paths), or [] when no style was scored."""
    output = Path(config.output)
    unscored = [s.name for s in styles if not (output / s.name / "score.json").is_file()]
    if unscored:  # never a score over fewer styles in silence
        return [f"score incomplete: {len(unscored)} of {len(styles)} style(s) not scored yet (e.g. {unscored[0]}); "
                "rerun the same command to finish"] if len(unscored) < len(styles) else []
    combined = combine_records(output, [s.name for s in styles])
    fsync = config.queue.fsync
    write_bytes(output / "scores.json", json.dumps(scores_json(combined), indent=1).encode(), fsync=fsync)
    plan = config.pixel_hash()
    runs = add_to_history(output, plan, combined, fsync=fsync)
    draw_scores(combined, output / "scores.png", runs, plan, fsync=fsync)
    images = {s.name: style_images(Path(config.dataset), output, Path(config.lora.dir), config.lora.subdir, s)
              for s in styles}
    page = write_report(combined, output, images, fsync=fsync)
    return (format_table(combined["result"], "score, StyleID results (the checker's formula):") + [""]
            + format_table(combined["content"], "score, content images (DreamBooth alone):")
            + [f"scores: {output / 'scores.json'}, {output / 'scores.png'}, {page}"])
