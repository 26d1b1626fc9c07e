"""The file tools: reading and listing inside the workspace, and no way out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentspark.tools import ToolCall, ToolDefinitionError, ToolRegistry, WorkspaceEscapeError, make_file_tools


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("outside the workspace")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "key.pem").write_text("PRIVATE")
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "notes.txt").write_text("hello\nworld\n")
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "big.txt").write_bytes(b"x" * 5000)
    (root / "café.bin").write_bytes(b"\xff\xfeok")
    return root


@pytest.fixture
def tools(workspace: Path) -> dict:
    return {t.name: t for t in make_file_tools(workspace)}


def test_read_and_list_inside_the_workspace(workspace: Path, tools: dict) -> None:
    read_file, list_dir = tools["read_file"], tools["list_dir"]
    assert read_file("notes.txt") == "hello\nworld\n"
    assert read_file("src/main.py") == read_file("./src/../src/main.py") == "print('hi')\n"
    assert read_file("café.bin") == "\ufffd\ufffdok"
    assert list_dir() == "\n".join([".:", "big.txt", "café.bin", "notes.txt", "src/"])
    assert list_dir("src") == "src:\nmain.py\npkg/"
    assert list_dir("src/pkg") == "src/pkg: (empty directory)"


def test_schemas(tools: dict) -> None:
    read_params = tools["read_file"].parameters_schema()
    assert read_params["required"] == ["path"]
    assert read_params["properties"]["max_bytes"]["default"] == 100_000
    assert read_params["properties"]["max_bytes"]["exclusiveMinimum"] == 0
    list_params = tools["list_dir"].parameters_schema()
    assert list_params["required"] == [] and list_params["properties"]["path"]["default"] == "."


def test_read_is_capped_at_max_bytes(tools: dict) -> None:
    text = tools["read_file"]("big.txt", max_bytes=100)
    assert text.startswith("x" * 100) and not text.startswith("x" * 101)
    assert "[truncated: showing the first 100 of 5000 bytes]" in text
    assert tools["read_file"]("big.txt", max_bytes=5000) == "x" * 5000


@pytest.mark.parametrize("path", ["../secret.txt", "src/../../secret.txt", "..", "../outside/key.pem",
                                  "src/pkg/../../../outside"])
def test_dotdot_cannot_escape(tools: dict, path: str) -> None:
    tool = tools["list_dir"] if path.endswith(("..", "outside")) else tools["read_file"]
    with pytest.raises(WorkspaceEscapeError, match="outside the workspace"):
        tool(path)


def test_absolute_paths_are_refused_even_inside(workspace: Path, tools: dict) -> None:
    for path in (str(workspace / "notes.txt"), str(workspace.parent / "secret.txt"), "/etc/passwd"):
        with pytest.raises(WorkspaceEscapeError, match="relative to the workspace"):
            tools["read_file"](path)
    with pytest.raises(WorkspaceEscapeError):
        tools["list_dir"]("/")


def test_symlinks_pointing_outside_are_refused(workspace: Path, tools: dict) -> None:
    os.symlink(workspace.parent / "secret.txt", workspace / "innocent.txt")
    os.symlink(workspace.parent / "outside", workspace / "linked_dir")
    os.symlink(workspace / "notes.txt", workspace / "src" / "notes_link.txt")  # stays inside: fine
    with pytest.raises(WorkspaceEscapeError):
        tools["read_file"]("innocent.txt")
    with pytest.raises(WorkspaceEscapeError):
        tools["read_file"]("linked_dir/key.pem")
    with pytest.raises(WorkspaceEscapeError):
        tools["list_dir"]("linked_dir")
    assert tools["read_file"]("src/notes_link.txt") == "hello\nworld\n"


def test_workspace_reached_through_a_symlink(workspace: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(workspace, alias)
    read_file, _ = make_file_tools(alias)
    assert read_file("notes.txt") == "hello\nworld\n"
    with pytest.raises(WorkspaceEscapeError):
        read_file("../secret.txt")


def test_mistakes_come_back_as_results(tools: dict) -> None:
    registry = ToolRegistry(tools.values())
    results = registry.run_sync([
        ToolCall("1", "read_file", {"path": "../secret.txt"}),
        ToolCall("2", "read_file", {"path": "missing.txt"}),
        ToolCall("3", "read_file", {"path": "src"}),
        ToolCall("4", "list_dir", {"path": "notes.txt"}),
        ToolCall("5", "read_file", {"path": "notes.txt", "max_bytes": 0}),
        ToolCall("6", "read_file", {"path": "notes.txt", "max_bytes": 2}),
    ])
    assert [r.status for r in results] == ["error", "error", "error", "error", "invalid_arguments", "ok"]
    assert results[0].content.startswith("WorkspaceEscapeError: '../secret.txt' leads outside")
    assert results[1].content == "FileNotFoundError: no file 'missing.txt' in the workspace"
    assert results[2].content.startswith("IsADirectoryError: 'src' is a directory; use list_dir")
    assert results[3].content.startswith("NotADirectoryError: 'notes.txt' is a file")
    assert "max_bytes" in results[4].content
    assert results[5].content.startswith("he\n[truncated")


def test_workspace_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ToolDefinitionError, match="does not exist"):
        make_file_tools(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(ToolDefinitionError, match="not a directory"):
        make_file_tools(tmp_path / "file")
