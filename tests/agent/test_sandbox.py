"""The code executor: limits, the audit-hook guard, fallback images, code extraction, shipped plots.

Every test starts real child interpreters. Three shipped plots run by default (a plain one, one
that reads a CSV, a polar one); the others are marked slow (about 1-3 s each on a busy 2-core host).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from neustream.backends.sandbox import ExecResult, extract_code, run_code
from neustream.catalog.agent import list_plots
from neustream.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOOD_PLOT = (
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3], [3, 1, 2])\n"
    "plt.savefig('novice.png')\n"
)
FAST_PLOTS = {"line", "csv_lines", "polar"}


@pytest.fixture
def fallback(tmp_path: Path) -> Path:
    p = tmp_path / "ground_truth.png"
    p.write_bytes(PNG_MAGIC + b"fallback")
    return p


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a reaper that is not us."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_good_plot_is_ok_and_a_png(tmp_path):
    r = run_code(GOOD_PLOT, tmp_path / "req")
    assert isinstance(r, ExecResult)
    assert (r.status, r.returncode, r.used_fallback) == ("ok", 0, False)
    assert r.image == (tmp_path / "req" / "novice.png").resolve()
    assert r.image.read_bytes()[:8] == PNG_MAGIC
    assert r.seconds > 0


def _still_beating(path: Path, for_s: float = 1.0) -> bool:
    """Does a killed run's heartbeat file still change? (pids are the sandbox's own under
    bubblewrap, so the file, not the pid, tells whether anything lives on)."""
    before = path.read_text() if path.exists() else None
    time.sleep(for_s)
    return (path.read_text() if path.exists() else None) != before


def test_endless_loop_times_out_and_is_killed(tmp_path):
    code = ("import time\nwhile True:\n    open('beat', 'w').write(repr(time.time()))\n"
            "    time.sleep(0.05)\n")
    r = run_code(code, tmp_path, timeout_s=1.0)
    assert r.status == "timeout"
    assert 1.0 <= r.seconds < 2.5
    assert (tmp_path / "beat").exists() and not _still_beating(tmp_path / "beat")


def test_timeout_kills_a_forked_grandchild(tmp_path):
    # libc fork through ctypes gets past the audit hook (the docstring's caveat); the time
    # limit must still take the grandchild down with its parent.
    code = (
        "import ctypes, time\n"
        "name = 'child' if ctypes.CDLL(None).fork() == 0 else 'parent'\n"
        "while True:\n"
        "    open(name, 'w').write(repr(time.time()))\n"
        "    time.sleep(0.05)\n"
    )
    r = run_code(code, tmp_path, timeout_s=1.0)
    assert r.status == "timeout"
    assert (tmp_path / "child").exists() and not _still_beating(tmp_path / "child")


def test_exception_is_error_with_traceback_and_fallback(tmp_path, fallback):
    r = run_code("x = 1\nraise ValueError('boom')\n", tmp_path / "req", fallback_image=fallback)
    assert r.status == "error" and r.returncode == 1
    assert "Traceback" in r.log and "ValueError: boom" in r.log
    assert r.used_fallback
    assert r.image == (tmp_path / "req" / "novice.png").resolve()
    assert r.image.read_bytes() == fallback.read_bytes()


def test_no_image_and_stale_image_does_not_count(tmp_path, fallback):
    work = tmp_path / "req"
    work.mkdir()
    (work / "novice.png").write_bytes(PNG_MAGIC + b"from an earlier run")
    r = run_code("print('no plot today')\n", work)
    assert (r.status, r.returncode, r.image) == ("no_image", 0, None)
    assert not (work / "novice.png").exists()
    assert "no plot today" in r.log
    r = run_code("pass\n", work, fallback_image=fallback)
    assert r.status == "no_image" and r.used_fallback and r.image.read_bytes() == fallback.read_bytes()


def test_write_outside_workdir_is_blocked(tmp_path):
    outside = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="neustream-outside-"))  # seen inside
    outside.chmod(0o777)
    keep = outside / "keep.txt"
    keep.write_text("precious")
    target = outside / "x.txt"
    r = run_code(f"open({str(target)!r}, 'w').write('leak')\n", tmp_path / "req")
    assert r.status == "blocked"
    assert "PermissionError" in r.log
    assert not target.exists()
    r = run_code(f"import os\nos.remove({str(keep)!r})\n", tmp_path / "req")
    assert r.status == "blocked" and keep.read_text() == "precious"
    r = run_code(f"import shutil\nshutil.rmtree({str(outside)!r})\n", tmp_path / "req")
    assert r.status == "blocked" and keep.exists()
    shutil.rmtree(outside)


def test_writes_inside_workdir_and_allowed_dirs_work(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    code = (
        "import os, shutil, tempfile\n"
        "os.makedirs('a/b')\n"
        "open('a/b/f.txt', 'w').write('x')\n"
        "shutil.rmtree('a')\n"
        "tempfile.NamedTemporaryFile().close()\n"
        f"open({str(extra / 'out.txt')!r}, 'w').write('y')\n"
    )
    r = run_code(code, tmp_path / "req", image_name="none.png", allowed_write_dirs=[extra])
    assert r.status == "no_image", r.log  # exit 0: every write was allowed
    assert (extra / "out.txt").read_text() == "y"


@pytest.mark.parametrize("code", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
    "import socket\nsocket.getaddrinfo('example.com', 80)\n",
    "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\n",
], ids=["connect", "getaddrinfo", "bind"])
def test_network_is_blocked(tmp_path, code):
    r = run_code(code, tmp_path)
    assert r.status == "blocked", r.log
    assert "network access" in r.log


@pytest.mark.parametrize("code", [
    f"import subprocess\nsubprocess.run(['touch', {'/tmp/neustream-sandbox-spawned'!r}])\n",
    "import os\nos.system('true')\n",
    "import os\nos.fork()\n",
    "import os\nos.execv('/bin/true', ['true'])\n",
], ids=["subprocess", "system", "fork", "exec"])
def test_child_processes_are_blocked(tmp_path, code):
    r = run_code(code, tmp_path)
    assert r.status == "blocked", r.log
    assert "starting or signalling processes" in r.log
    assert not Path("/tmp/neustream-sandbox-spawned").exists()


def test_memory_limit_gives_error_not_a_dead_host(tmp_path):
    # 1 GiB in touched 16 MiB chunks against a 256 MiB address-space limit.
    code = "x = []\nfor _ in range(64):\n    x.append(b'\\x01' * (16 << 20))\n"
    r = run_code(code, tmp_path, mem_mb=256)
    assert r.status == "error"
    assert "MemoryError" in r.log


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="image_name"):
        run_code("pass\n", tmp_path, image_name="../x.png")
    with pytest.raises(ValueError, match="fallback_image"):
        run_code("pass\n", tmp_path, fallback_image=tmp_path / "missing.png")
    with pytest.raises(ValueError, match="timeout_s"):
        run_code("pass\n", tmp_path, timeout_s=0)


def test_extract_code_from_fenced_reply():
    reply = (
        "Sure! Here is the code:\n\n```python\nimport matplotlib.pyplot as plt\nplt.plot([1])\n```\n"
        "And save it:\n```py\nplt.savefig('novice.png')\n```\nHope this helps (really)."
    )
    assert extract_code(reply) == "import matplotlib.pyplot as plt\nplt.plot([1])\n\nplt.savefig('novice.png')\n"
    # untagged fences are used only when no python-tagged block exists; shell blocks never
    assert extract_code("```bash\npip install x\n```\n```\nprint(1)\n```") == "print(1)\n"
    # a reply cut off by the token limit keeps its open block
    assert extract_code("Code:\n```python\nimport numpy as np\nx = np.ones(3") == "import numpy as np\nx = np.ones(3\n"


def test_extract_code_heuristic_without_fences():
    reply = (
        "Here is how to do it.\n"
        "import numpy as np\n"
        "from matplotlib import pyplot as plt\n"
        "plt.plot(np.arange(3))\n"
        "plt.savefig('novice.png')\n"
        "This code draws a line; run it with python\n"
    )
    assert extract_code(reply) == (
        "import numpy as np\nfrom matplotlib import pyplot as plt\n"
        "plt.plot(np.arange(3))\nplt.savefig('novice.png')\n"
    )
    assert extract_code("no code here (sorry)") == ""
    assert extract_code("plt.show()\nimport os\n") == ""  # last ')' line before the first import
    assert extract_code("") == ""


def test_list_plots_catalog():
    plots = list_plots()
    assert 12 <= len(plots) <= 20
    for p in plots:
        assert "novice.png" in p.code and "savefig" in p.code
        assert all(f.is_file() for f in p.data_files)
    with_data = [p.name for p in plots if p.data_files]
    assert len(with_data) >= 2
    assert [p.name for p in list_plots(["polar", "line"])] == ["polar", "line"]
    with pytest.raises(ValueError, match="unknown plot"):
        list_plots(["nope"])


@pytest.mark.parametrize("plot", [
    p if p.name in FAST_PLOTS else pytest.param(p, marks=pytest.mark.slow) for p in list_plots()
], ids=lambda p: p.name)
def test_shipped_plot_runs_ok(tmp_path, plot):
    r = run_code(plot.code, tmp_path, timeout_s=60, data_files=plot.data_files)
    assert r.status == "ok", r.log
    assert r.image.read_bytes()[:8] == PNG_MAGIC


def test_cli_writes_csv_and_sidecar(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "times" / "exec_times.csv"
    assert main(["exec-times", "--repeats", "2", "--plots", "line", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["plot", "repeat", "seconds", "status"]
    assert list(df["repeat"]) == [0, 1] and set(df["status"]) == {"ok"}
    assert (df["seconds"] > 0).all()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert {"host_cpu", "cpu_count", "python", "matplotlib", "date", "method"} <= set(meta)
    assert 0 < meta["bare_python_s"] and 0 < meta["sandbox_empty_s"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert main(["exec-times", "--plots", "nope", "--out", str(out)]) == 2
    assert "unknown plot(s) nope" in capsys.readouterr().err
