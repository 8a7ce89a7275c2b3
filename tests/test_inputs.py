"""Bad inputs are refused at launch in one line naming the file and the fix, with exit code 2
(docs/inputs.md): values that would pass a type check and then fail every job, duplicate keys, names the
filesystem cannot hold, a dataset that is a file, a disk that fills up, Ctrl-C while planning."""
import errno

import pytest
from PIL import Image

import launch
from common.config import ConfigError, load_config
from common.dataset import DatasetError, read_prompts
from queue_fixtures import graph_of, write_config


def one_line_exit_2(capsys, argv, *needles):
    """launch.main(argv) exits 2 with one line on stderr holding every needle."""
    code = launch.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("section, key, value, why", [
    ("producer", "size", 0, "multiple of 8"),
    ("producer", "size", -8, "multiple of 8"),
    ("consumer", "size", 0, "multiple of 8"),
    ("producer", "prompt_template", "{prompt} by {artist}", "{artist}"),
    ("producer", "prompt_template", "{prompt} {0}", "{0}"),
    ("producer", "prompt_template", "{prompt.upper}", "{prompt.upper}"),
    ("producer", "prompt_template", "{prompt", "format"),
    ("lora", "subdir", "style_{name}", "{name}"),
    ("lora", "names", [], "at least one"),
    ("lora", "names", ["../x.bin"], "plain file name"),
    ("queue", "heartbeat_s", -1.0, "positive"),
    ("queue", "heartbeat_s", 0.0, "positive"),
    ("queue", "ttl_loading_s", -5.0, "positive"),
    ("queue", "ttl_working_s", 0.0, "positive"),
    ("queue", "backoff_base_s", -1.0, "0 or more"),
    ("queue", "backoff_max_s", -1.0, "0 or more"),
    ("queue", "restart_base_s", -0.5, "0 or more"),
    ("queue", "kill_grace_s", -1.0, "0 or more"),
    ("queue", "stop_grace_s", -1.0, "0 or more"),
    ("stages", "gen_cost", 0.0, "positive"),
])
def test_values_that_would_fail_every_job_are_refused_at_launch(tmp_path, capsys, section, key, value, why):
    path = write_config(tmp_path, **{section: {key: value}})
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], str(path), f"{section}.{key}", why)
    assert not (tmp_path / "q").exists()


def test_a_template_with_prompt_and_style_is_accepted():
    assert load_config(overrides={"producer.prompt_template": "{style}: {prompt}"}).producer.prompt_template


@pytest.mark.parametrize("text, where", [
    ("producer:\n  steps: 3\n  steps: 4\n", "line 3"),
    ("producer:\n  steps: 3\nproducer:\n  seed: 1\n", "line 3"),
])
def test_a_duplicate_yaml_key_is_an_error_naming_the_line(tmp_path, capsys, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"c.yaml: {where}: duplicate key") as e:
        load_config(path)
    assert "\n" not in str(e.value)
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], f"c.yaml: {where}: duplicate key")


def test_a_duplicate_prompt_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "prompt.json"
    path.write_text('{"0": "Dolphin", "1": "Tree", "0": "Cat"}')
    with pytest.raises(DatasetError, match=r"prompt.json: key '0' appears twice") as e:
        read_prompts(path)
    assert "\n" not in str(e.value)
    config = write_config(tmp_path)
    (tmp_path / "data" / "01" / "prompt.json").write_text('{"0": "Tree", "0": "Cat"}')
    one_line_exit_2(capsys, ["--config", str(config), "--gpus", "cpu"], "01/prompt.json: key '0' appears twice")


def test_a_dataset_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    path = write_config(tmp_path)
    data = tmp_path / "data"
    for p in sorted(data.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    data.rmdir()
    data.write_text("not a folder")
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], str(data), "not a folder")


@pytest.mark.parametrize("name, why", [("s" * 250, "too long"), ("a\tb", "printable")])
def test_a_style_folder_name_we_cannot_write_under_is_one_line_exit_2(tmp_path, capsys, name, why):
    path = write_config(tmp_path)
    style = tmp_path / "data" / name
    (style / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(style / "images" / "a.png")
    (style / "prompt.json").write_text('{"0": "Dog"}')
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], why, "rename the folder")
    assert not (tmp_path / "q" / "manifest.json").exists()


def _enospc(filename=None, *_args, **_kwargs):
    """What a write into a full filesystem raises (the file named, as the OS does)."""
    raise OSError(errno.ENOSPC, "No space left on device", None if filename is None else str(filename))


def test_a_full_disk_while_planning_is_one_line_exit_2_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    """ENOSPC is simulated where the queue gives a job file its name (linkat of the O_TMPFILE): the
    first byte that does not fit fails there on a real full disk too (a tmpfs needs root to mount)."""
    import common.jobqueue.queue as queue_module
    path = write_config(tmp_path)
    real = queue_module._link_fd
    calls = []

    def link_then_fill(fd, dst):
        calls.append(dst)
        if len(calls) > 2:
            _enospc(dst)
        real(fd, dst)

    monkeypatch.setattr(queue_module, "_link_fd", link_then_fill)
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], "No space left on device", "free space",
                    str(tmp_path / "q" / "gen" / "pending"))
    monkeypatch.setattr(queue_module, "_link_fd", real)
    config, graph, nodes, q = graph_of(path)
    assert len(q.scan("gen")["pending"]) == 2 and q.layout.manifest.exists()
    assert not list(q.layout.tmp.iterdir())


def test_a_full_disk_while_reclaiming_at_launch_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import common.jobqueue.queue as queue_module
    from common.jobqueue.planner import plan
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    claimed = q.claimer("gen", "host-gcpu-999999").claim(2)
    assert len(claimed) == 2
    monkeypatch.setattr(queue_module, "write_bytes", _enospc)
    one_line_exit_2(capsys, ["--config", str(path), "--gpus", "cpu"], "No space left on device")
    assert len(q.scan("gen")["claimed"]) == 2  # nothing lost: the next launch reclaims them


def test_ctrl_c_while_planning_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    import common.jobqueue.planner as planner

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "plan", interrupted)
    path = write_config(tmp_path)
    assert launch.main(["--config", str(path), "--gpus", "cpu"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err and "rerun" in err, err
    assert planner  # the real planner is untouched


@pytest.mark.parametrize("stage", ["gen", "sty"])
def test_a_dead_letter_is_requeued_by_a_plain_rerun_once_a_file_it_reads_changed(tmp_path, stage):
    import time
    from common.devkit.fake_stage import FakeGen
    from common.jobqueue.planner import plan
    path = write_config(tmp_path, lora={"missing": "warn", "dir": str(tmp_path / "loras")})
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    wid = "host-gcpu-7"
    (job,) = q.claimer("gen", wid).claim(1)
    if stage == "sty":  # its content is made; the StyleID job fails
        FakeGen(config, "cpu").run([graph.task(job)], lambda phase: None)
        q.complete(wid, job)
        (job,) = q.claimer("sty", wid).claim(1)
    job.attempts = job.max_attempts - 1
    assert q.fail(wid, job, "exception", "ImageError: ref.png: damaged") == "failed"
    again = plan(q, nodes)
    assert [j.id for j in again.failed] == [job.id] and not again.retried  # nothing changed: it stays dead
    time.sleep(0.05)  # file times come from a coarse clock
    fixed = graph.task(job).files["lora_file"] if stage == "gen" else \
        tmp_path / "data" / job.group / "images" / "ref.png"
    fixed.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(fixed, format="PNG")  # the user's fix (for gen: a LoRA appears)
    report = plan(q, nodes)
    assert [j.id for j in report.retried] == [job.id] and report.queued[stage] == 1 and not report.failed
    assert job.id in q.scan(stage)["pending"]


def test_a_full_disk_while_the_supervisor_reclaims_stops_the_run_with_one_line(tmp_path, monkeypatch):
    import time
    from common.workers.supervisor import Supervisor
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    lines = []
    sup = Supervisor(config, path, [("cpu", "both")], q, log=lines.append)
    monkeypatch.setattr(q, "reclaim", lambda *a, **k: _enospc(str(q.layout.tmp)))
    slot = sup.slots[0]
    slot.wid = "host-gcpu-5"
    sup._reap(slot, 1, time.time())  # a worker died and its jobs cannot be rewritten
    assert sup.stopping and sup.signal_code == 2
    assert any("No space left on device" in line and "rerun" in line for line in lines), lines
    assert all("\n" not in line for line in lines)
