"""Every command the README shows names a real entry point with real flags."""
import importlib.util
import re
import shlex

import pytest

from conftest import ROOT
from kogpt2_chatbot.__main__ import _subparsers, build_parser, legacy_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")
# Commands that are not ours: checked only for being a known tool.
EXTERNAL = {"pip", "printf", "echo", "curl", "vllm", "git", "cd", "export", "nvidia-smi", "ls", "cat", "head",
            "sudo", "apt-get", "source", ".", "uvicorn", "ssh", "tail", "open", "hf"}


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
    spec.loader.exec_module(module)
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


def test_first_two_commands_are_the_offline_quick_start():
    first, second = COMMANDS[0], COMMANDS[1]
    assert "train_torch.py --train" in first and "data/sample_chats.csv" in first and "scratch" in first
    assert "pytest" in second and "HF_HUB_OFFLINE=1" in second
