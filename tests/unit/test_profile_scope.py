"""``balancer profile show`` lists the current configuration's specs from the store shared by the
user's configurations (a profile is keyed by spec name and command hash), and names the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.cli.main import main
from balancer.config.parse import read_config
from balancer.profiling.store import ProfileStore, spec_hash


def _config(tmp: Path, name: str, specs: dict[str, str], store: Path) -> Path:
    text = f'[profiles]\npath = "{store}"\n'
    for spec, script in specs.items():
        text += f'[[servers]]\nname = "{spec}"\ncommand = ["python3", "{script}"]\n'
    path = tmp / name
    path.write_text(text)
    return path


def test_show_lists_the_configurations_specs_and_names_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "profiles.sqlite"
    # Two projects: both call a spec "heat", with different models; b also has "wave".
    a = _config(tmp_path, "a.toml", {"heat": "heat.py"}, store)
    b = _config(tmp_path, "b.toml", {"heat": "other_heat.py", "wave": "wave.py"}, store)
    rows = {}
    for path, calls in ((a, 3), (b, 5)):
        for s in read_config(path)[0].servers:
            rows[(s.name, spec_hash(s), "forward")] = {"calls": calls}
    with ProfileStore(store) as st:
        st.add(rows, set(rows))

    def show(*args: str) -> list[str]:
        assert main(["profile", "show", *args]) == 0
        return capsys.readouterr().out.splitlines()

    out = show("--config", str(a))
    shown = f"showing the specs of {a} (--all for every spec): 1 of 3 rows"
    assert out[0] == f"store {store} (shared by your configurations); {shown}"
    assert [line.split()[:3] for line in out[2:]] == [["heat", "forward", "3"]]
    out = show("--config", str(b))
    assert sorted(line.split()[:3] for line in out[2:]) == [
        ["heat", "forward", "5"],
        ["wave", "forward", "5"],
    ]
    out = show("--config", str(b), "--all")
    assert out[0].endswith("showing every spec: 3 of 3 rows") and len(out) == 5
    # A configuration that cannot be read: one line, exit status 2.
    assert main(["profile", "show", "--config", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err.startswith("balancer: error: ")
