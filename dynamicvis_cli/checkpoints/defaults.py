"""Which released model each command runs when given no ``--model`` (data only, no imports, so the
command-line help can name them without loading torch)."""

#: command → released model name (``arch.tag`` in models/ or $DVIS_MODEL_PATH). A command not listed
#: (or whose model is not installed) falls back to the ``base`` architecture.
COMMAND_DEFAULTS: dict[str, str] = {
    "segment": "tiny.dubai-landcover",
    "detect": "tiny.nwpu-dota",
    "change": "tiny.change-levir-dsifn",  # experimental: see its card
    "classify": "tiny.dubai-landcover-chips",  # also the embedder: chosen on retrieval, see its card
    "index": "tiny.dubai-landcover-chips",
}
