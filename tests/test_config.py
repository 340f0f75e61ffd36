"""`edge serve` configuration: file + flags -> one validated ServeConfig; every mistake is one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.cli import serve as cli
from edge.core.errors import EdgeError
from edge.service.config import (
    OPTIONS,
    ServeConfig,
    build_config,
    config_from_args,
    load_config_file,
    parse_http_address,
)


def _cfg(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    return config_from_args(cli.build_parser().parse_args(argv), env=env or {})


def test_defaults_and_required():
    cfg = _cfg(["--model", "m.pt", "--source", "test://"])
    assert cfg.model == "m.pt" and cfg.source == "test://"
    assert cfg.http is None and cfg.threshold == 0.0 and cfg.overlay is True and cfg.loop is False
    with pytest.raises(EdgeError, match="no model given"):
        _cfg(["--source", "test://"])
    with pytest.raises(EdgeError, match="no source given"):
        _cfg(["--model", "m.pt"])


def test_toml_file_and_flags_override(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('model = "a.pt"\nsource = 0\nthreshold = 0.7\nloop = true\nhttp = 8080\ntop-k = 2\n')
    cfg = _cfg(["--config", str(f), "--threshold", "0.5", "--no-loop"])
    assert cfg.model == "a.pt" and cfg.source == "0"  # `source = 0` (an int in TOML) means camera 0
    assert cfg.threshold == 0.5 and cfg.loop is False  # flags win over the file
    assert cfg.top_k == 2  # dashed keys are accepted too
    assert cfg.http == "8080" and cfg.http_address == ("127.0.0.1", 8080)


def test_json_config(tmp_path):
    f = tmp_path / "serve.json"
    f.write_text(json.dumps({"model": "a.onnx", "source": "test://", "smoothing": 0.5}))
    assert _cfg(["--config", str(f)]).smoothing == 0.5


def test_unknown_key_is_one_clear_error(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('model = "a.pt"\nsource = "0"\ntreshold = 0.5\n')
    with pytest.raises(EdgeError) as e:
        load_config_file(f)
    msg = str(e.value)
    assert "'treshold'" in msg and "did you mean 'threshold'" in msg and "valid keys" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, needle",
    [
        ('threshold = 1.5', "threshold must be a number between 0 and 1; got 1.5"),
        ('threshold = "high"', "threshold must be a number, got 'high'"),
        ('loop = "yes"', "loop must be true or false"),
        ('top_k = 1.5', "top_k must be an integer"),
        ('backend = "trt"', "backend must be one of auto, tensorrt, onnxruntime, torch; got 'trt'"),
        ('smoothing = 1.0', "smoothing must be a number >= 0 and < 1"),
        ('jpeg_quality = 0', "jpeg_quality must be an integer between 1 and 100"),
        ('[http]\nport = 1', "'http' is a table"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, needle):
    f = tmp_path / "serve.toml"
    f.write_text('model = "a.pt"\nsource = "0"\n' + text + "\n")
    with pytest.raises(EdgeError) as e:
        _cfg(["--config", str(f)])
    assert needle in str(e.value)
    assert str(f) in str(e.value)


def test_invalid_toml(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text("model = \n")
    with pytest.raises(EdgeError, match="not valid TOML"):
        load_config_file(f)
    with pytest.raises(EdgeError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.toml")


def test_flag_values_checked_too():
    with pytest.raises(EdgeError, match=r"--threshold: threshold must be a number between 0 and 1"):
        _cfg(["--model", "m", "--source", "0", "--threshold", "2"])
    with pytest.raises(EdgeError, match="--stall-timeout: stall_timeout must be a number > 0"):
        _cfg(["--model", "m", "--source", "0", "--stall-timeout", "0"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8080", ("127.0.0.1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_http_address(text, expected):
    assert parse_http_address(text) == expected


@pytest.mark.parametrize("text", ["abc", "1.2.3.4:99999", "::1:80", "host:"])
def test_bad_http_address(text):
    with pytest.raises(EdgeError, match="http"):
        parse_http_address(text)


def test_public_http_needs_a_token():
    base = {"model": "m", "source": "0"}
    with pytest.raises(EdgeError, match="without authentication; set --token"):
        build_config({}, {**base, "http": "0.0.0.0:8080"}, env={})
    assert build_config({}, {**base, "http": "0.0.0.0:8080", "token": "t"}, env={}).token == "t"
    assert build_config({}, {**base, "http": "0.0.0.0:8080", "allow_no_token": True}, env={}).token is None
    # the token can come from the environment (kept off the command line, where `ps` shows it)
    assert build_config({}, {**base, "http": "0.0.0.0:8080"}, env={"EDGE_TOKEN": "s3"}).token == "s3"
    assert build_config({}, {**base, "http": "[::1]:8080"}, env={}).token is None
    with pytest.raises(EdgeError, match="--token is set but --http is not"):
        build_config({}, {**base, "token": "t"}, env={})


def test_every_option_has_a_flag_and_a_default():
    parser = cli.build_parser()
    flags = {a for act in parser._actions for a in act.option_strings}
    for opt in OPTIONS:
        assert "--" + opt.name.replace("_", "-") in flags
        assert opt.help


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "serve.toml"
    f.write_text('model = "a.pt"\nsource = "0"\nfoo = 1\n')
    assert cli.main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'foo'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_print_config_hides_token(capsys):
    rc = cli.main(["--model", "m.pt", "--source", "test://", "--http", "0.0.0.0:1", "--token", "secret",
                   "--print-config"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["token"] == "***" and out["http"] == "0.0.0.0:1" and out["model"] == "m.pt"


def test_reading_the_config_imports_no_image_or_array_library():
    # `edge serve --help` and a config error must answer at once, before cv2/numpy/torch load
    code = ("import sys; from edge.service.config import add_arguments, config_from_args; "
            "heavy = [m for m in ('cv2', 'numpy', 'torch', 'onnxruntime') if m in sys.modules]; "
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_allowed_hosts_from_flags_and_file(tmp_path):
    cfg = _cfg(["--model", "m", "--source", "0", "--http", "8080", "--allowed-hosts", "Jetson.local, cam.example.com."])
    assert cfg.allowed_host_names == ("jetson.local", "cam.example.com")
    f = tmp_path / "serve.toml"
    f.write_text('model = "m"\nsource = "0"\nhttp = 8080\nallowed_hosts = ["jetson.local", "10.0.0.5"]\n')
    assert _cfg(["--config", str(f)]).allowed_host_names == ("jetson.local", "10.0.0.5")
    f.write_text('model = "m"\nsource = "0"\nhttp = 8080\nallowed-hosts = "jetson.local"\n')
    assert _cfg(["--config", str(f)]).allowed_host_names == ("jetson.local",)
    assert _cfg(["--model", "m", "--source", "0", "--http", "8080"]).allowed_host_names == ()


@pytest.mark.parametrize("value", ["http://jetson.local", "jetson.local:8080", "a b", "jetson.local,,x", ",",
                                   "cam_1.local"])
def test_bad_allowed_hosts_name_the_entry(value):
    with pytest.raises(EdgeError) as e:
        _cfg(["--model", "m", "--source", "0", "--http", "8080", "--allowed-hosts", value])
    msg = str(e.value)
    assert msg.startswith("--allowed-hosts: allowed_hosts ") and "\n" not in msg
    assert "host name" in msg or "must not be empty" in msg


def test_allowed_hosts_needs_http():
    with pytest.raises(EdgeError, match="--allowed-hosts is set but --http is not"):
        _cfg(["--model", "m", "--source", "0", "--allowed-hosts", "jetson.local"])


def test_several_sources_from_flags_and_file(tmp_path):
    cfg = _cfg(["--model", "m", "--source", "0", "--source", "rtsp://cam.local/live"])
    assert cfg.sources == ("0", "rtsp://cam.local/live") and cfg.max_batch is None
    f = tmp_path / "serve.toml"
    f.write_text('model = "m"\nsource = [0, "test://?seed=2"]\nmax_batch = 1\n')
    cfg = _cfg(["--config", str(f)])
    assert cfg.sources == ("0", "test://?seed=2") and cfg.max_batch == 1  # `0` in a list means camera 0 too
    assert _cfg(["--config", str(f), "--source", "csi://0"]).sources == ("csi://0",)  # flags replace the list
    f.write_text('model = "m"\nsource = ["test://"]\n')
    assert _cfg(["--config", str(f)]).source == "test://"  # a list of one is a single camera, as before
    assert _cfg(["--model", "m", "--source", "test://"]).sources == ("test://",)
    out = json.loads(subprocess.run([sys.executable, "-m", "edge", "serve", "--model", "m", "--source", "0",
                                     "--source", "1", "--print-config"], capture_output=True, text=True,
                                    timeout=60).stdout)
    assert out["source"] == ["0", "1"]


@pytest.mark.parametrize("argv, needle", [
    (["--source", "0", "--source", "/dev/video0"], "--source: cameras 0 and 1 have the same source '/dev/video0'"),
    (["--source", "a.mp4", "--source", "b.mp4", "--source", " a.mp4"], "cameras 0 and 2 have the same source"),
    (["--source", "test://", "--source", "test://", "--display"], "have the same source 'test://'"),
    (["--source", "0", "--source", "1", "--display"], "--display shows one camera"),
    (["--source", "0", "--max-batch", "0"], "--max-batch: max_batch must be an integer >= 1; got 0"),
])
def test_several_sources_mistakes_are_one_line(argv, needle):
    with pytest.raises(EdgeError) as e:
        _cfg(["--model", "m", *argv])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_duplicate_source_with_credentials_is_not_echoed(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('model = "m"\nsource = ["rtsp://u:pw@cam/live", "rtsp://u:pw@cam/live"]\n')
    with pytest.raises(EdgeError, match="cameras 0 and 1 have the same source;") as e:
        _cfg(["--config", str(f)])
    assert "pw" not in str(e.value) and str(f) in str(e.value)
    f.write_text('model = "m"\nsource = []\n')
    with pytest.raises(EdgeError, match="source must not be an empty list"):
        _cfg(["--config", str(f)])
    f.write_text('model = "m"\nsource = ["0", true]\n')
    with pytest.raises(EdgeError, match="source must be a string, got True"):
        _cfg(["--config", str(f)])
