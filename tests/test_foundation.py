"""The skeleton: 8 simulated devices, the CLI's help, version and unknown-command error."""
import subprocess
import sys

import jax

from sddr_jax import __version__, cli


def test_eight_simulated_devices():
    assert jax.device_count() == 8
    assert jax.local_device_count() == 8


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("refine", "convert", "evaluate", "train", "demo", "datasets", "predict", "version"):
        assert name in out


def test_version_command(capsys):
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"sddr-jax {__version__}"
    assert "jax " in out


def test_unknown_command_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "sddr_jax", "refin"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown command 'refin'" in proc.stderr
    assert "Known commands:" in proc.stderr


def test_console_script_installed():
    import importlib.metadata as md

    eps = [ep for ep in md.entry_points(group="console_scripts") if ep.name == "sddr-jax"]
    assert eps and eps[0].value == "sddr_jax.cli:main"
