"""The run folder's one reader and writer (ctxlit.runs): status, final metric, damage, identity."""

import json
import subprocess

import pytest

from ctxlit import runs
from ctxlit.runs import Status


def finished_run(folder, value=0.25, csv="epoch,val/acc1\n0,0.1\n1,0.2\n"):
    (folder / runs.CONFIG).write_text("seed_everything: 0\n")
    (folder / runs.METRICS).write_text(csv)
    runs.write_summary(folder, {"status": "finished", "monitor": "val/acc1", "metrics": {"val/acc1": value}})
    return folder


def test_summary_carries_the_format_version_and_is_read_back(tmp_path):
    runs.write_summary(tmp_path, {"status": "finished"})
    assert json.loads((tmp_path / runs.SUMMARY).read_text())["format"] == runs.FORMAT_VERSION


def test_final_metric_is_the_summary_value_then_the_last_logged_one(tmp_path):
    run = runs.read_run(finished_run(tmp_path))
    assert run.status is Status.FINISHED and run.final("val/acc1") == 0.25
    runs.write_summary(tmp_path, {"status": "finished", "metrics": {}})
    assert runs.read_run(tmp_path).final("val/acc1") == 0.2


def test_a_metrics_line_cut_mid_write_is_left_out(tmp_path):
    finished_run(tmp_path, csv="epoch,val/acc1\n0,0.1\n1,0.2\n2,0.15")
    assert runs.read_run(tmp_path).history("val/acc1") == [(0, 0.1), (1, 0.2)]


def test_a_run_with_no_summary_is_running_and_has_no_result(tmp_path):
    (tmp_path / runs.CONFIG).write_text("a: 1\n")
    (tmp_path / runs.METRICS).write_text("epoch,val/acc1\n0,0.5\n")
    run = runs.read_run(tmp_path)
    assert run.status is Status.RUNNING and run.final("val/acc1") is None and "no summary.json" in run.why


def test_a_running_record_whose_process_is_gone_reads_as_interrupted(tmp_path):
    (tmp_path / runs.CONFIG).write_text("a: 1\n")
    runs.write_summary(tmp_path, {"status": "running", "process": runs.process_token()})
    assert runs.read_run(tmp_path).status is Status.RUNNING
    child = subprocess.Popen(["true"])
    token = runs.process_token(child.pid)
    child.wait()
    runs.write_summary(tmp_path, {"status": "running", "process": token})
    assert runs.read_run(tmp_path).status is Status.INTERRUPTED


def test_a_reused_pid_is_not_the_recorded_process(tmp_path):
    token = {**runs.process_token(), "started": runs.process_token()["started"] - 1}
    assert not runs.process_alive(token)


def test_a_finished_summary_wins_over_a_trial_still_marked_running(tmp_path):
    # the runner was killed, its orphaned trial finished on its own: the result stands
    finished_run(tmp_path)
    runs.write_trial(tmp_path, {"status": "running", "process": {"pid": 2**22 + 7, "host": None}})
    assert runs.read_run(tmp_path).status is Status.FINISHED


def test_the_runner_alone_knows_stopped(tmp_path):
    finished_run(tmp_path)
    runs.write_summary(tmp_path, {"status": "interrupted", "metrics": {"val/acc1": 0.3}})
    runs.write_trial(tmp_path, {"status": "stopped"})
    run = runs.read_run(tmp_path)
    assert run.status is Status.STOPPED and run.status.done and run.final("val/acc1") == 0.3


@pytest.mark.parametrize("file,content,reason", [
    (runs.SUMMARY, "[1, 2]", "holds a list"),
    (runs.SUMMARY, '"text"', "holds a str"),
    (runs.SUMMARY, '{"status": "finished", "monitor": ["a"]}', "monitor is a list"),
    (runs.SUMMARY, '{"status": "done"}', "status 'done' is not one of"),
    (runs.SUMMARY, '{"format": 99, "status": "finished"}', "format 99, newer"),
    (runs.SUMMARY, "{", "not valid JSON"),
    (runs.CONFIG, "- a\n- b\n", "holds a list"),
    (runs.CONFIG, b"seed: \xff\n", "not UTF-8"),
    (runs.METRICS, b"epoch,val/acc1\n0,\xff\n", "not UTF-8"),
    (runs.METRICS, "epoch,val/acc1\nabc,0.5\n", "epoch 'abc' is not a number"),
])
def test_damaged_content_is_a_problem_of_the_run_never_an_exception(tmp_path, file, content, reason):
    finished_run(tmp_path)
    path = tmp_path / file
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    run = runs.read_run(tmp_path)
    assert run.damaged and run.final("val/acc1") is None
    assert any(p.file == file and reason in p.reason for p in run.problems), run.problems


def test_a_run_without_config_is_damaged(tmp_path):
    runs.write_summary(tmp_path, {"status": "finished", "metrics": {"val/acc1": 0.5}})
    run = runs.read_run(tmp_path)
    assert run.damaged and "config.yaml: missing" in run.why


def test_identity_ignores_key_order_and_tells_values_apart():
    assert runs.params_key({"a": 1, "b": [1, 2]}) == runs.params_key({"b": [1, 2], "a": 1})
    assert runs.params_key({"a": 1}) != runs.params_key({"a": 1.5})
    assert runs.params_key({"m.block": {"class_path": "X", "init_args": {"r": 1}}}) != \
        runs.params_key({"m.block": {"class_path": "X", "init_args": {"r": 2}}})


def test_last_checkpoint_never_points_outside_the_run(tmp_path):
    outside = tmp_path / "elsewhere.ckpt"
    outside.write_bytes(b"x")
    run_dir = tmp_path / "run"
    (run_dir / runs.CHECKPOINTS).mkdir(parents=True)
    (run_dir / runs.CHECKPOINTS / runs.LAST_CHECKPOINT).symlink_to(outside)
    assert runs.read_run(run_dir).last_checkpoint is None


def test_run_folders_are_found_below_a_sweep_folder_and_through_links(tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("trial-000", "trial-001"):
        finished_run((sweep / name).mkdir(parents=True) or sweep / name)
    (sweep / "trial-000" / runs.WANDB / "offline-run").mkdir(parents=True)
    (sweep / "trial-000" / runs.WANDB / "offline-run" / runs.CONFIG).write_text("x: 1\n")
    elsewhere = finished_run((tmp_path / "other").mkdir() or tmp_path / "other")
    (sweep / "linked").symlink_to(elsewhere)
    assert [p.name for p in runs.find_run_folders(sweep)] == ["linked", "trial-000", "trial-001"]


def test_metrics_of_resumed_attempts_are_joined_in_step_order(tmp_path):
    """Lightning's CSV logger deletes the metrics.csv it finds; the runner keeps it aside. A
    resume from an older last.ckpt logs steps 2-3 again: the later values stand."""
    (tmp_path / "metrics-before-attempt-2.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.9\n0,2,0.8\n0,3,0.7\n")
    (tmp_path / runs.METRICS).write_text("epoch,step,train/loss,val/acc1\n0,2,0.75,\n0,3,0.65,\n0,3,,0.5\n1,4,0.6,\n")
    runs.join_metrics(tmp_path)
    rows = runs.read_run(tmp_path).rows
    assert [(r["step"], r["train/loss"], r["val/acc1"]) for r in rows] == [
        ("0", "1.0", ""), ("1", "0.9", ""), ("2", "0.75", ""), ("3", "0.65", ""), ("3", "", "0.5"), ("4", "0.6", "")]
    assert (tmp_path / "metrics-before-attempt-2.csv").is_file()  # nothing deleted
    runs.join_metrics(tmp_path)  # joining again changes nothing
    assert runs.read_run(tmp_path).rows == rows
