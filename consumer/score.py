"""Score a results folder in the challenge's layout against the config's dataset, as the checker does
(docs/score.md): `python launch.py score --config C [--results DIR] [--json PATH] [--gpus 0|cpu]` runs this.

Prints a row per style (the six metrics and the final score) and the overall row, and writes JSON with the
checker's keys plus `per_style`. A result missing or unreadable for any prompt is named and the score is
reported incomplete (exit 1): a score over fewer images would not be the checker's."""
import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m consumer.score", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="the run's YAML config (dataset, output, eval:)")
    p.add_argument("--results", help="the folder with STYLE/<prompt>.png (default: the config's output)")
    p.add_argument("--json", help="write the scores here as JSON")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)

    from common.config import ConfigError, load_config
    from common.dataset import DatasetError, read_dataset
    from common.score.files import find_score_files
    try:
        config = load_config(args.config)
        styles = read_dataset(Path(config.dataset))
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    results = Path(args.results or config.output)
    files, missing = find_score_files(config.eval)
    if files is None:
        print(f"error: cannot score: {missing[0]}" + (f" (and {len(missing) - 1} more file(s))" if len(missing) > 1
                                                      else ""), file=sys.stderr)
        return EXIT_USAGE
    wanted = {s.name: [results / s.name / f"{p.name}.png" for p in s.prompts] for s in styles}
    absent = [path for paths in wanted.values() for path in paths if not path.is_file()]
    if absent:
        for path in absent[:20]:
            print(f"missing: {path}", file=sys.stderr)
        print(f"score incomplete: {len(absent)} result image(s) missing; nothing averaged over fewer images",
              file=sys.stderr)
        _write_json(args.json, {"complete": False, "missing": [str(p) for p in absent]})
        return EXIT_INCOMPLETE

    from common.images import ImageError
    from common.jittor_env import use_device
    from common.score.formula import combine
    from common.score.report import _json_safe, format_table
    from common.score.scorer import Scorer, reference_images
    use_device(args.device)
    scorer = Scorer(files)
    parts = {}
    try:
        for style in styles:
            print(f"scoring style {style.name} ({len(wanted[style.name])} image(s))", file=sys.stderr)
            parts[style.name] = scorer.parts(wanted[style.name], reference_images(style.dir))
    except (ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        print("score incomplete: an image does not read", file=sys.stderr)
        _write_json(args.json, {"complete": False, "unreadable": str(e)})
        return EXIT_INCOMPLETE
    scores = combine(parts)
    print("\n".join(format_table(scores, f"score of {results} (the checker's formula):")))
    _write_json(args.json, _json_safe(dict(scores, complete=True)))
    return EXIT_OK


def _write_json(path, data):
    if path:
        Path(path).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    sys.exit(main())
