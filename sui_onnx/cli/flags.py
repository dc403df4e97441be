"""How the command line spells the library's options: errors and warnings name an option as
`seq_len` (errors.option) and the CLI shows its flag (--seq-len). A leaf module: the command
modules use it without importing the CLI package's entry point."""

from __future__ import annotations

# The flag of each library option an error message names (errors.option); every other option
# `name` is shown as --name with dashes.
OPTION_FLAGS = {"sources": "--calib", "explicit": "--tap", "eval_data": "--eval"}
# where one command spells an option otherwise (`sui-onnx eval` names its data --data, not --eval)
COMMAND_FLAGS = {"eval": {"eval_data": "--data", "eval_tokens": "--tokens", "eval_seq_len": "--seq-len"}}
LIBRARY_OPTIONS = frozenset({
    "sources", "seq_len", "batch_size", "tokens", "mix", "site", "include", "exclude", "explicit", "device",
    "precision", "threads", "top_fraction", "energy_levels", "advice_q", "advice_quantile", "align", "max_memory",
    "checkpoint", "checkpoint_every", "resume", "stats", "ray", "ray_shards", "encoder",
    "tau", "min_r2", "seed_key",  # scaling's fit options
    "eval_data", "eval_tokens", "eval_seq_len", "reference",  # evaluate
    "ridge", "method", "width", "ratio", "schedule",  # slimming
})


def flag_for(name: str, command: str | None = None) -> str:
    """The command-line flag of the library option ``name`` (as ``command`` spells it)."""
    return COMMAND_FLAGS.get(command or "", {}).get(name) or OPTION_FLAGS.get(name) or "--" + name.replace("_", "-")


def cli_message(exc: BaseException | str, command: str | None = None) -> str:
    """The message of a library error (or a warning's text) as the command line says it: each
    option it names (`seq_len`) shown as its flag (--seq-len), as ``command`` spells it."""
    from ..errors import OPTION_PATTERN

    return OPTION_PATTERN.sub(lambda m: flag_for(m[1], command) if m[1] in LIBRARY_OPTIONS else m[0], str(exc))
