"""Nothing gets in: no stored file runs code, no command deletes or writes outside its folder, no page runs script.

Each attack is a planted payload that would create a marker file (or, in the browser, change the page's
title) if it ran; a control shows that the payload is real where that is safe (a plain pickle load or SB3's
own load of the same bytes runs it), and the project's path must leave no marker.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

import build_site
import rlr_controllers as controllers
import sweep
from rlr_engine import Config

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


class Payload:
    """Unpickling this creates the marker file: what a crafted results file would do with real code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def small_controllers(tmp_path: Path) -> dict[str, controllers.TrainedController]:
    """A DQN controller and an SB3 PPO controller with untrained weights, as save_controllers takes them."""
    config = Config(schedule=controllers.ControllerConfig(decision_interval=5).schedule(20))
    from rlr_core import DQNAgent
    agent = DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, 0)
    curve = pd.DataFrame({"episode": [0], "seed": [3000], "return": [1.0], "diverged": [False], "round": [0]})
    from stable_baselines3.ppo import MlpPolicy

    from rlr_env import LRControlEnv
    spaces = LRControlEnv(config.task, config.schedule)
    ppo = MlpPolicy(spaces.observation_space, spaces.action_space, lr_schedule=lambda _: 0.0)
    return {"dqn": controllers.TrainedController("dqn", "dqn", config.to_dict(), agent.policy_net.state_dict(), curve, 1.0),
            "ppo": controllers.TrainedController("ppo", "ppo", config.to_dict(), ppo.state_dict(), curve, 1.0)}


def test_a_controllers_file_with_a_pickled_payload_is_refused_without_running_it(tmp_path):
    control_marker, marker = tmp_path / "control-ran", tmp_path / "payload-ran"
    path = tmp_path / "controllers.pt"
    torch.save({"format": controllers.CONTROLLERS_FILE_FORMAT, "format_version": controllers.CONTROLLERS_FILE_VERSION,
                "controllers": {"evil": Payload(control_marker)}}, path)
    torch.load(path, weights_only=False)  # control: a plain unpickling runs the payload
    assert control_marker.exists()
    torch.save({"format": controllers.CONTROLLERS_FILE_FORMAT, "format_version": controllers.CONTROLLERS_FILE_VERSION,
                "controllers": {"evil": Payload(marker)}}, path)
    with pytest.raises(ValueError, match="not a file written by save_controllers"):
        controllers.load_controllers(path)
    assert not marker.exists()


def sb3_zip_with_payload(marker: Path) -> bytes:
    """An SB3-style saved model whose data JSON holds a ':serialized:' policy_class: SB3's load() unpickles it."""
    serialized = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": serialized}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data", json.dumps(data))
        archive.writestr("_stable_baselines3_version", "2.9.2")
    return buffer.getvalue()


def test_a_stored_sb3_policy_is_plain_tensors_and_a_planted_zip_never_reaches_sb3s_load(tmp_path):
    control_marker, marker = tmp_path / "control-ran", tmp_path / "payload-ran"
    import stable_baselines3
    with pytest.raises(Exception):  # control: SB3's own load deserialises the entry (and then fails)
        stable_baselines3.PPO.load(io.BytesIO(sb3_zip_with_payload(control_marker)), device="cpu")
    assert control_marker.exists()
    saved = small_controllers(tmp_path)
    path = controllers.save_controllers(saved, tmp_path / "controllers.pt")
    loaded = controllers.load_controllers(path)  # weights_only=True inside
    assert all(isinstance(tensor, torch.Tensor) for tensor in loaded["ppo"].policy.values())
    payload = torch.load(path, weights_only=True)  # the file itself is plain data
    payload["controllers"]["ppo"]["policy"] = sb3_zip_with_payload(marker)  # the old format's bytes
    torch.save(payload, path)
    with pytest.raises(ValueError, match="policy must be a dict|policy must map names to tensors"):
        controllers.load_controllers(path)
    assert not marker.exists()


def test_the_rebuilt_sb3_policy_acts_like_the_model_it_was_saved_from(tmp_path):
    """The stored state_dict, rebuilt without SB3's load, gives the trained model's greedy actions."""
    import numpy as np
    from stable_baselines3 import PPO

    from rlr_env import LRControlVectorEnv
    from rlr_controllers import SB3VectorEnv
    config = Config(schedule=controllers.ControllerConfig(decision_interval=5).schedule(20))
    env = SB3VectorEnv(LRControlVectorEnv(2, config.task, config.schedule))
    import rlr_core as rc
    with rc.global_rng_preserved():
        model = PPO("MlpPolicy", env, n_steps=8, seed=3, device="cpu")
    policy = controllers.sb3_policy("ppo", config, model.policy.state_dict())
    observations = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    assert (policy.predict(observations, deterministic=True)[0]
            == model.predict(observations, deterministic=True)[0]).all()


def test_every_torch_load_in_the_project_reads_plain_tensors_only():
    """No library module, entry point or benchmark calls torch.load without weights_only=True (Ray Tune's
    checkpoints in rlr_peers included), and none calls SB3's load()."""
    offenders = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch":
                    keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                    value = keywords.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        offenders.append(f"{path.name}:{node.lineno}")
                if node.func.attr in ("load", "load_state_dict_from_url") and \
                        getattr(node.func.value, "id", "") in ("PPO", "DQN", "stable_baselines3"):
                    offenders.append(f"{path.name}:{node.lineno} (SB3 load)")
    assert not offenders, offenders


def test_a_pbt_checkpoint_round_trips_as_plain_data(tmp_path):
    """What pbt_member checkpoints (model, Adam, history with inf, writer) loads with weights_only=True."""
    import rlr_core as rc
    model = rc.make_model(rc.TaskConfig(), 0)
    optimizer = rc.make_adam(model.parameters(), 1e-3)
    rc.full_batch_loss(model, rc.make_polynomial_dataset(rc.TaskConfig(), 0)).backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "history": {"loss": [0.1, float("inf")], "lr": [1e-3, 1e-3]}, "writer": "trial_0"}
    torch.save(state, tmp_path / "member.pt")
    back = torch.load(tmp_path / "member.pt", weights_only=True)
    assert back["history"] == state["history"] and back["writer"] == "trial_0"
    torch.save({**state, "writer": Payload(tmp_path / "ran")}, tmp_path / "member.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "member.pt", weights_only=True)
    assert not (tmp_path / "ran").exists()


# --- the site builder deletes only what it wrote --------------------------------------------------------

def test_the_site_builder_refuses_the_checkout_and_any_folder_it_did_not_write(tmp_path, monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for output in (ROOT, ROOT.parent, precious, Path.home()):
        with pytest.raises(ValueError, match="--output"):
            build_site.prepare_output(output)
    assert (precious / "thesis.tex").read_text() == "years of work" and (ROOT / ".git").exists()
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="--output"):
        build_site.prepare_output(Path("."))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_site.prepare_output(tmp_path / "a-file")
    (tmp_path / "link").symlink_to(precious)
    with pytest.raises(ValueError, match="not a folder"):
        build_site.prepare_output(tmp_path / "link")
    assert (precious / "thesis.tex").exists()


def test_the_site_builder_reuses_a_new_an_empty_or_its_own_folder(tmp_path):
    build_site.prepare_output(tmp_path / "new" / "site")
    assert (tmp_path / "new" / "site" / build_site.SITE_MARKER).is_file()
    (tmp_path / "new" / "site" / "old-page.html").write_text("stale")
    build_site.prepare_output(tmp_path / "new" / "site")  # its own folder: emptied
    assert not (tmp_path / "new" / "site" / "old-page.html").exists()
    (tmp_path / "empty").mkdir()
    build_site.prepare_output(tmp_path / "empty")
    assert (tmp_path / "empty" / build_site.SITE_MARKER).is_file()


def test_the_site_builders_command_line_refuses_and_deletes_nothing(tmp_path):
    import subprocess
    import sys
    (tmp_path / "keep.txt").write_text("keep")
    run = subprocess.run([sys.executable, str(ROOT / "build_site.py"), "--output", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2 and "refusing to delete" in run.stderr
    assert (tmp_path / "keep.txt").read_text() == "keep"


# --- a sweep writes only inside its own folder -----------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "/abs", "", "a\\b", 12])
def test_a_sweep_name_that_is_not_one_plain_folder_name_is_refused(name):
    with pytest.raises(ValueError, match="sweep name"):
        sweep.check_sweep_name(name)


def test_a_sweep_named_dotdot_in_its_grid_or_on_the_command_line_writes_nothing_outside(tmp_path):
    notebook = tmp_path / "nb.ipynb"
    cell = nbformat.v4.new_code_cell("x: int = 1", metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata=KERNEL), notebook)
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: ..\nparameters:\n  x: [1, 2]\n")
    with pytest.raises(ValueError, match="sweep name"):
        sweep.load_spec(notebook, grid)
    grid.write_text("parameters:\n  x: [1, 2]\n")
    with pytest.raises(ValueError, match="sweep name"):
        sweep.load_spec(notebook, grid, name="..")
    spec = sweep.load_spec(notebook, grid, name="ok")
    spec.name = ".."  # set after the checks: every path is still resolved and checked before a write
    with pytest.raises(ValueError, match="sweep name|outside"):
        sweep.expand_points(spec, tmp_path / "root")
    with pytest.raises(ValueError, match="not inside"):
        sweep.inside(tmp_path / "root" / "ok", tmp_path / "root" / "ok" / ".." / "table.csv")
    points = sweep.expand_points(sweep.load_spec(notebook, grid, name="ok"), tmp_path / "root")
    assert all(point.folder.parent == (tmp_path / "root" / "ok").resolve() for point in points)


@pytest.mark.parametrize("seeds", ["{first: 1.5, count: 2}", "{first: 0, count: 2.7}", "{first: '0', count: 2}"])
def test_a_grids_seeds_must_be_ints_not_truncated(tmp_path, seeds):
    notebook = tmp_path / "nb.ipynb"
    cell = nbformat.v4.new_code_cell("seed: int = 0\nn_seeds: int = 1", metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell], metadata=KERNEL), notebook)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"seeds: {seeds}\n")
    with pytest.raises(TypeError, match="seeds.first|seeds.count"):
        sweep.load_spec(notebook, grid)


# --- the site runs no script that a notebook, an output or the README plants -----------------------------

PLANTED = {
    "markdown": ("<script>document.title='PWNED-markdown-script'</script>\n\n"
                 "<img src=\"x\" onerror=\"document.title='PWNED-markdown-onerror'\">\n\n"
                 "<a id=\"evil-link\" href=\"javascript:document.title='PWNED-javascript-url'\">a link</a>\n\n"
                 "<svg onload=\"document.title='PWNED-svg'\"></svg>\n\n"
                 "<iframe src=\"javascript:parent.document.title='PWNED-iframe'\"></iframe>\n\n"
                 "<a id=\"data-link\" href=\"data:text/html,<script>alert(1)</script>\">data</a>"),
    "output": ("<script>document.title='PWNED-output-script'</script>"
               "<div id=\"evil-div\" onmouseover=\"document.title='PWNED-onmouseover'\">hover me</div>"
               "<img src=\"data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=\" onload=\"document.title='PWNED-img-load'\">"),
    "readme": ("<script>document.title='PWNED-readme-script'</script>\n\n"
               "<details open ontoggle=\"document.title='PWNED-ontoggle'\"><summary>s</summary></details>\n\n"
               "<form action=\"javascript:document.title='PWNED-form'\"><button id=\"evil-button\">go</button></form>\n"),
}


@pytest.fixture(scope="module")
def planted_site(tmp_path_factory) -> Path:
    """The site built from a copy of the checkout whose first notebook, an output and the README carry scripts."""
    root = tmp_path_factory.mktemp("planted")
    for folder in ("notebooks", "figures", "docs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("*.ipynb_checkpoints"))
    notebook_path = root / "notebooks" / f"{build_site.NOTEBOOKS[0]}.ipynb"
    notebook = nbformat.read(notebook_path, as_version=4)
    code = nbformat.v4.new_code_cell("display(HTML(...))", execution_count=None)
    code.outputs = [nbformat.v4.new_output("display_data", data={"text/html": PLANTED["output"], "text/plain": "x"})]
    notebook.cells[:0] = [nbformat.v4.new_markdown_cell(PLANTED["markdown"]), code]
    nbformat.write(notebook, notebook_path)
    (root / "README.md").write_text((ROOT / "README.md").read_text() + "\n\n" + PLANTED["readme"])
    output = root / "site"
    build_site.build(output, root)
    return output


def test_no_planted_script_runs_on_the_site(browser, planted_site):
    for name in ("index", build_site.NOTEBOOKS[0]):
        page = browser.new_page()
        page.goto((planted_site / f"{name}.html").as_uri(), wait_until="load")
        for selector in ("#evil-link", "#evil-div", "#evil-button", "#data-link"):
            if page.locator(selector).count():
                page.locator(selector).first.hover()
                page.locator(selector).first.click(timeout=2000, no_wait_after=True)
        page.wait_for_timeout(300)
        assert not page.title().startswith("PWNED"), f"{name}: a planted script ran ({page.title()})"
        assert page.evaluate("document.querySelectorAll('script, iframe, form, [onerror], [onload], "
                             "[onmouseover], [ontoggle]').length") == 0
        page.close()


def test_the_pages_carry_no_script_and_a_policy_that_forbids_scripts(planted_site):
    for path in planted_site.glob("*.html"):
        text = path.read_text()
        lowered = text.lower()
        assert "<script" not in lowered and "javascript:" not in lowered, path.name
        assert not re.search(r"<[^>]*\son\w+\s*=", lowered), path.name  # no event-handler attribute
        assert "script-src 'none'" in text, path.name
    notebook = (planted_site / f"{build_site.NOTEBOOKS[0]}.html").read_text()
    assert "hover me" in notebook and "a link" in notebook  # the text stays; only the active parts go
    assert "data:image/png;base64," in notebook  # the figures stay
