"""The .arch grammar, shipped as package data (see arch.lark)."""
from pathlib import Path

GRAMMAR_FILE = Path(__file__).with_name("arch.lark")
