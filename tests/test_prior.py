"""Prior preservation's class images through the queue, with the stand-in stages (docs/training.md): one
set per distinct class prompt, shared by every style that uses it and made before their training; a rerun
after a crash makes only the missing images; off by default, leaving the plan and the LoRA records as
they were."""
import re

from common.config import load_config
from common.jobqueue.planner import plan
from common.prior import class_folder, class_group
from queue_fixtures import check_invariants, graph_of, kill_run, launch as run_launcher, wait_for, write_config


def prior_config(tmp_path, prompt="a painting", images=3, **sections):
    return write_config(tmp_path, lora={"missing": "train", "dir": str(tmp_path / "style")},
                        train={"prior": {"prompt": prompt, "images": images}}, **sections)


def jobs_of(nodes, stage):
    return [n for n in nodes if n.job.stage == stage]


def test_one_class_set_per_distinct_prompt_shared_by_its_styles_and_made_before_training(tmp_path):
    path = prior_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    assert graph.stages == ("prior", "train", "gen", "sty")
    prior, train = jobs_of(nodes, "prior"), jobs_of(nodes, "train")
    assert len(prior) == 3 and {n.job.group for n in prior} == {class_group("a painting")}
    for node in train:  # each style's training waits for the whole shared set
        assert set(node.needs) == {n.job.key for n in prior}
    report = plan(q, nodes)
    assert report.queued == {"prior": 3, "train": 2, "gen": 6, "sty": 0}
    assert len(q.scan("train")["blocked"]) == 2
    result = run_launcher(path)
    assert result.returncode == 0, result.stderr
    check_invariants(path)
    folder = class_folder(config, class_group("a painting"))
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    # a class prompt naming its style: one set per style
    per_style = graph_of(prior_config(tmp_path / "per-style", prompt="{style} painting"))[2]
    groups = {n.job.group for n in jobs_of(per_style, "prior")}
    assert groups == {class_group("00 painting"), class_group("01 painting")}
    for node in jobs_of(per_style, "train"):
        group = class_group(f"{node.job.group} painting")
        own = {n.job.key for n in jobs_of(per_style, "prior") if n.job.group == group}
        assert len(own) == 3 and set(node.needs) == own


def test_a_rerun_after_a_crash_makes_only_the_missing_class_images(tmp_path):
    path = prior_config(tmp_path, images=6, producer={"batch": 1})
    config, graph, nodes, queue = graph_of(path)
    folder = class_folder(config, class_group("a painting"))
    first = run_launcher(path, env={"JSTYLEID_FAKE_MS": "300-350"}, wait=False)
    wait_for(lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= 2, timeout=60)
    kill_run(first, queue.layout.root)
    made = {p.name for p in folder.glob("*.png")}
    assert 2 <= len(made) < 6
    before = set(queue.layout.logs.glob("*.log"))
    rerun = run_launcher(path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - len(made)} prior job(s)" in rerun.stderr
    ran = {}  # job id -> class image name, of the prior jobs the rerun's workers ran
    names = {n.job.id: n.job.payload["name"] for n in jobs_of(nodes, "prior")}
    for log in set(queue.layout.logs.glob("*.log")) - before:
        for ids in re.findall(r"prior \d+ job\(s\) of [^:]+: \[([^\]]*)\]", log.read_text()):
            ran.update({jid: names[jid] for jid in re.findall(r"'([0-9a-f]+)'", ids)})
    assert sorted(f"{name}.png" for name in ran.values()) == sorted({f"{i:04d}.png" for i in range(6)} - made)
    assert len(list(folder.glob("*.png"))) == 6
    check_invariants(path)


def test_class_images_count_once_made_and_settings_they_do_not_read_keep_them(tmp_path):
    path = prior_config(tmp_path)
    assert run_launcher(path).returncode == 0
    _, graph, nodes, q = graph_of(prior_config(tmp_path, consumer={"gamma": 0.5}))  # a StyleID setting
    for node in jobs_of(nodes, "prior") + jobs_of(nodes, "train"):
        assert q.rules[node.job.stage].done(node.job), node.job.stage
    _, graph, nodes, q = graph_of(prior_config(tmp_path, producer={"steps": 30}))  # the class images' sampler
    assert not any(q.rules["prior"].done(n.job) for n in jobs_of(nodes, "prior"))
    assert graph.superseded(graph.spec("prior"), graph.task(jobs_of(nodes, "prior")[0].job)) == "settings"


def test_prior_preservation_is_off_by_default_and_out_of_the_pixel_hash(tmp_path):
    lora = {"missing": "train", "dir": str(tmp_path / "style")}
    off = load_config(write_config(tmp_path, lora=lora))
    assert off.train.prior is None and "prior" not in graph_of(tmp_path / "run.yaml")[1].stages
    on = load_config(prior_config(tmp_path))
    assert on.pixel_hash() == off.pixel_hash()  # generation and StyleID job ids: only the LoRAs differ
    assert on.train_hash() != off.train_hash()  # a LoRA trained beside class images is another LoRA
