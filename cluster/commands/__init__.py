"""The `avsiam` subcommands: one module per command (argparse options + main), calling the
libraries (pipeline, shards, trainer). Imported only when their command runs (cluster/cli.py)."""
