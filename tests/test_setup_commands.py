"""The README's set-up is what CI runs, and the suite can run beside the README's server.

- The README's test command is a line of .ci/run, as written, and the README's first command's two parts
  are too (CI runs them apart only to start the server in the background).
- No test binds a fixed port: the README's own first command holds 8080 while its second runs the suite,
  and other processes may hold any other fixed port. A test that starts `lastrank serve` passes --port
  (a free port, or 0), and no test binds or calls a port number written into it.
- Every `lastrank` command in the README parses as written, and the set-up pasted twice says where the
  running server is.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def readme_setup_commands() -> list[str]:
    """The commands of the README's Set-up block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Set-up\n.*?^```bash\n(.*?)^```", text, re.S | re.M).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _command_words(line: str) -> list[str]:
    """A shell line's command and arguments, without leading VAR=value assignments or redirections."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)
    stop = next((i for i, w in enumerate(words) if w in ("&", ">", "2>&1", "|", ";") or w.startswith(">")), len(words))
    return words[:stop]


def test_the_readme_set_up_is_two_commands_and_ci_runs_them_as_written():
    install_and_serve, test = readme_setup_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test in ci_lines, f"the README's test command {test!r} is not a line of .ci/run"
    install, serve = (part.strip() for part in install_and_serve.split("&&"))
    assert install in ci_lines
    assert shlex.split(serve) in [_command_words(line) for line in ci_lines], \
        f"{serve!r} (with no other arguments) is not run by .ci/run"
    script = ROOT / shlex.split(test)[0]
    assert script.is_file() and script.stat().st_mode & 0o111, f"{test}: not an executable file of the repository"
    assert 'exec python -m pytest "$@"' in script.read_text()


# A port number written into a test: bind((host, N)), port=N, or a local URL on the port of a server that may
# really be running beside the suite: lastrank serve's default 8080 (the README's own server), Ray Serve's
# 8000, PostgreSQL's 5432, Ray's 6379 and 8265. (Other local URLs in tests are parsed, never called, or are
# http://127.0.0.1:9, the discard port, for a refused connection.) `lastrank serve --port N` is checked on
# the parsed argument lists below.
FIXED_PORT = re.compile(r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\]):(?:8080|8000|5432|6379|8265)\b|"
                        r"\bport\s*=\s*\d*[1-9]|\.bind\(\(\s*[\"'][^\"']*[\"']\s*,\s*\d*[1-9]")


def _test_sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)


def _serve_commands(tree: ast.AST):
    """Literal argument lists that run `lastrank serve`: ["serve", ...] or [..., "lastrank", "serve", ...]."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value if isinstance(e, ast.Constant) else "*" if isinstance(e, ast.Starred) else None
                     for e in node.elts]
            if words[:1] == ["serve"] or any(a == "lastrank" and b == "serve" for a, b in zip(words, words[1:])):
                yield node, words


def test_no_test_binds_a_fixed_port():
    fixed = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
             for p in _test_sources() for text in [p.read_text()] for m in FIXED_PORT.finditer(text)]
    assert not fixed, "tests with a fixed port (use server_process.free_port() or port 0):\n" + "\n".join(fixed)
    serve_ports = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in _test_sources()
                   for node, words in _serve_commands(ast.parse(p.read_text())) if not _free_port_given(words)]
    assert not serve_ports, "`lastrank serve` on its default 8080 or a fixed port (pass --port with a free port or 0):\n" \
        + "\n".join(serve_ports)


def _free_port_given(words: list) -> bool:
    """--port is given, with a computed value (None: not a literal) or 0; or the arguments come from the caller
    (*args: its call sites are read by the first check)."""
    if "--port" in words[:-1]:
        return words[words.index("--port") + 1] in (None, "0")
    return "*" in words


def test_the_port_checks_find_what_they_look_for():
    for line in ['httpx.get("http://127.0.0.1:8080/ready")', "f'http://localhost:8000/x'", "serve(port=8000)",
                 's.bind(("127.0.0.1", 5432))']:
        assert FIXED_PORT.search(line), line
    for line in ['"http://127.0.0.1:9/x.png"', '"http://127.0.0.1:{port}"', "port=0", "port=free_port()",
                 's.bind(("127.0.0.1", 0))', 'base_url = "http://127.0.0.1:9001"', "http://127.0.0.1:80801"]:
        assert not FIXED_PORT.search(line), line
    found = [words for _, words in _serve_commands(ast.parse(
        'a = ["serve", "--db", "x"]\nb = [sys.executable, "-m", "lastrank", "serve", "--port", str(p)]\n'
        'c = ("serve", "--port", "8081")\nd = ["rerank", "--port", "1"]\ne = ["lastrank", "serve", *args]'))]
    assert found == [["serve", "--db", "x"], [None, "-m", "lastrank", "serve", "--port", None], ["serve", "--port", "8081"],
                     ["lastrank", "serve", "*"]]
    assert [_free_port_given(w) for w in found] == [False, True, False, True]


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def readme_lastrank_commands() -> list[list[str]]:
    """Every `lastrank ...` command in the README's bash blocks, as the shell splits it (continuation lines
    joined, `a && b` split, comments, a trailing `&` and redirections dropped; `VAR=$(lastrank ...)`
    unwrapped)."""
    commands = []
    for block in _readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" #")[0].split("&&"):
                inner = re.fullmatch(r"\s*[A-Za-z_]+=\$\((lastrank .*)\)\s*", part)
                words = _command_words(inner.group(1) if inner else part)
                if words[:1] == ["lastrank"]:
                    commands.append(words)
    return commands


def test_every_readme_command_parses_as_written():
    """The README's commands are meant to be pasted: each must be a valid command line as written (no
    `[--optional]` placeholders, no removed flags). Running them twice beside the set-up's server is checked by
    hand (the serving example starts a server of its own)."""
    from lastrank.cli import build_parser

    commands = readme_lastrank_commands()
    assert len(commands) >= 6 and ["lastrank", "serve"] in commands
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            raise AssertionError(f"README: `{shlex.join(words)}` is not a valid command line") from None
    for block in _readme_blocks("python"):
        compile(block, "README.md", "exec")


def test_the_readme_check_finds_placeholders():
    from lastrank.cli import build_parser

    words = _command_words('lastrank rerank --model m --query q --documents d.txt [--top-n 1]  # x')
    assert words == ["lastrank", "rerank", "--model", "m", "--query", "q", "--documents", "d.txt", "[--top-n", "1]"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(words[1:])


def test_the_set_up_pasted_twice_names_the_server_already_running(tmp_path):
    """The README's first command run a second time: `lastrank serve` finds its port held by the first one and
    says so, with that server's models and playground, instead of only "port in use". The first server is
    stood in for by the real app's `GET /` answer (create_app, a toy model) served on a free port."""
    import http.server
    import subprocess
    import sys
    import threading

    from fastapi.testclient import TestClient

    from support.keyword_backend import KeywordBackend
    from lastrank.api.app import create_app
    from lastrank.api.settings import ServerSettings
    from lastrank.store import Store

    store = Store(tmp_path / "first.db")
    with TestClient(create_app(ServerSettings(), store, backend=KeywordBackend())) as client:
        root = client.get("/")
    store.close()
    assert root.status_code == 200

    class FirstServer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(root.content)

        def log_message(self, *args):
            pass

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FirstServer)
    threading.Thread(target=first.serve_forever, daemon=True).start()
    port = first.server_address[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "lastrank", "serve", "--port", str(port),
                               "--model", str(tmp_path / "missing"), "--db", str(tmp_path / "second.db")],
                              capture_output=True, text=True, timeout=60)
    finally:
        first.shutdown()
        first.server_close()
    assert proc.returncode == 2
    model = root.json()["models"][0]
    assert proc.stderr.strip() == (
        f"lastrank: error: port {port} on 127.0.0.1 is already in use by a running lastrank server (models {model}; "
        f"playground http://127.0.0.1:{port}/playground); use that one, stop it first, or pass --port for a second "
        "server")
