"""Built-in tools, one module each. None is registered anywhere by default: a program picks the
ones it wants (``http_get`` in particular only exists once built with an allowlist)."""

from .arithmetic import calculator
from .http_get import make_http_get_tool
from .workspace import make_file_tools

__all__ = ["calculator", "make_file_tools", "make_http_get_tool"]
