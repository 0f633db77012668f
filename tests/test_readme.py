"""Every command the README shows names a real entry point with real flags, and the ones that need
no GPU, no hub and no server run as written, Python snippets included, in a fresh folder."""
import importlib.util
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, USER_ENV as ENV, noise  # as a user runs them: every line must also be quiet
from kogpt2_chatbot.__main__ import _subparsers, build_parser, legacy_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")
# Commands that are not ours: checked only for being a known tool.
EXTERNAL = {"pip", "printf", "echo", "curl", "vllm", "git", "cd", "export", "nvidia-smi", "ls", "cat", "head",
            "sudo", "apt-get", "source", ".", "uvicorn", "ssh", "tail", "open", "hf", "ollama", "llama-server",
            "llama-cli"}


def shell_commands():
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                yield line


def segments(line):
    for part in re.split(r"&&|\|\||;|\|", line):
        words = shlex.split(part)
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
            words.pop(0)
        if words:
            yield words


def parser_for(words):
    """(parser, args) for a python command line of ours; (None, None) for python -m pip and the like."""
    rest = words[1:]
    if rest[:1] == ["-m"]:
        module, rest = rest[1], rest[2:]
        if module == "kogpt2_chatbot":
            subs = _subparsers(build_parser())
            assert rest and rest[0] in subs, f"unknown command in {words}"
            return subs[rest[0]], rest[1:]
        assert module in ("venv", "pip", "pytest"), f"unknown module {module}"
        return None, None
    if rest[:1] == ["-c"]:
        return None, None
    script, args = rest[0], rest[1:]
    path = ROOT / script
    assert path.exists(), f"{script} does not exist"
    if script in ("train_torch.py", "test_torch.py"):
        return legacy_parser(), args
    if script == "chatbot.py":
        return _subparsers(build_parser())["answer"], args
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # as `python script.py` does: a bench script imports its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return (module.build_parser(), args) if hasattr(module, "build_parser") else (None, None)


COMMANDS = list(shell_commands())


def test_readme_has_commands():
    assert len(COMMANDS) > 15


@pytest.mark.parametrize("line", COMMANDS)
def test_command_is_real(line):
    for words in segments(line):
        if words[0] in ("python", "python3"):
            parser, args = parser_for(words)
            if parser is not None:
                try:
                    parser.parse_args(args)
                except SystemExit as exit:
                    pytest.fail(f"{' '.join(words)}: flags rejected (exit {exit.code})")
        else:
            assert words[0] in EXTERNAL, f"unknown command {words[0]!r} in: {line}"


def test_the_quick_start_comes_first_and_installs_the_right_torch():
    install, cpu_torch, package, train, tests = COMMANDS[:5]
    assert "venv" in install and "download.pytorch.org/whl/cpu" in cpu_torch and package == "pip install -e ."
    assert "train_torch.py --train" in train and "data/sample_chats.csv" in train and "scratch" in train
    assert "pytest" in tests and "HF_HUB_OFFLINE=1" in tests


# --- running them -----------------------------------------------------------------------------

NOT_HERE = ("--gpus", " serve", "bench/", "vllm", "curl", "hf download", "pip ", "pytest", "venv", "--devices",
            "MASTER_ADDR", "skt/", "--base-model kogpt2", "runs/", "ollama", "llama-server", "llama-cli")
# Replying from a .gguf needs the optional llama-cpp-python (CI installs it).
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


HUB_ID = re.compile(r"--base-model (?!model_chp/)[\w.-]+/[\w.-]+")


def runnable(line: str) -> bool:
    """Needs no GPU, no hub, no long-running server, no install: it can run in a test."""
    return (not any(word in line for word in NOT_HERE) and not HUB_ID.search(line)
            and not line.startswith("python train_torch.py --train ")
            and (HAS_LLAMA_CPP or not re.search(r"--model_params \S+\.gguf", line)))


def python_snippets():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh folder with the project's files, where the quick start's training has run as written."""
    home = tmp_path_factory.mktemp("readme")
    for name in ("data", "EC_data"):
        shutil.copytree(ROOT / name, home / name)
    for name in ("train_torch.py", "test_torch.py", "chatbot.py"):
        (home / name).symlink_to(ROOT / name)
    result = subprocess.run(QUICK_START, shell=True, cwd=home, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise(result.stderr) == [], noise(result.stderr)
    return home


QUICK_START = next(c for c in COMMANDS if c.startswith("python train_torch.py --train ") and "scratch-tiny" in c)


def runnable_lines():
    """Runnable lines, less those that use what a line that cannot run here would have made."""
    lines, unmade = [], []
    for line in COMMANDS:
        made = re.search(r"--model-dir (\S+)", line)
        if not runnable(line):
            if made and line != QUICK_START:  # the quick start's training runs in the fixture
                unmade.append(made[1])
            continue
        if not any(f"{folder}/" in line for folder in unmade):
            lines.append(line)
    return lines


def test_offline_commands_run_as_written(home):
    lines = runnable_lines()
    assert len(lines) >= 12
    for line in lines:  # in README order: later lines use what earlier ones made
        result = subprocess.run(["bash", "-c", line], cwd=home, env=ENV, capture_output=True, text=True,
                                timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{line}\n{result.stderr[-2000:]}"
        assert noise(result.stderr) == [], (line, noise(result.stderr))


@pytest.fixture(scope="module")
def server_port(home):
    import uvicorn

    from kogpt2_chatbot import Chatbot
    from kogpt2_chatbot.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Chatbot.load(home / "model_chp/demo/model_-last.ckpt")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_python_snippets_run_as_written(home, server_port):
    snippets = python_snippets()
    assert len(snippets) >= 4
    for code in snippets:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server_port}")  # the README's server, on a free port
        result = subprocess.run([sys.executable, "-c", code], cwd=home, env=ENV, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"{code}\n{result.stderr[-2000:]}"
        assert result.stdout.strip(), code  # every snippet shows something
        assert noise(result.stderr) == [], (code, noise(result.stderr))


def test_the_package_map_names_every_file_of_the_package():
    """The contributors' map in the README lists each module of the package, and no module that is gone."""
    section = README.split("## 9-1.")[1].split("\n## ")[0]
    package = ROOT / "kogpt2_chatbot"
    files = {p.relative_to(package).as_posix() for p in package.rglob("*.py")} - {"__init__.py"}
    named = set()
    for row in re.findall(r"^\| (.+?) \|", section, flags=re.M):
        for name in re.findall(r"`([\w/]+(?:\.py)?)`", row):
            named.add(name)
    inside = {n for n in files if "/" in n}
    for n in files - inside:
        assert n in named, f"README's package map does not name {n}"
    for n in inside:
        folder, name = n.split("/")
        assert f"{folder}/" in named and (name in section), f"README's package map does not name {n}"
    for name in named:
        if name.endswith(".py") and "/" not in name and name != "__init__.py":
            assert name in files or any(f.endswith("/" + name) for f in files), f"the map names {name}, not in the package"
